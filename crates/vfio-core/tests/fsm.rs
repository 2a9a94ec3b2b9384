//! `next_state` against an oracle transcribed from SPEC §1, exhaustively, plus path properties.
#![cfg(not(feature = "shuttle"))]

use std::collections::{HashMap, VecDeque};
use vfio_core::{next_state, path, DeviceState, Errno, MigrationFlags};

/// SPEC §1's next-state table, copied as text. Rows: current; columns: requested.
const SPEC_TABLE: &str = "
| cur \\ new | STOP | RUNNING | STOP_COPY | RESUMING | RUNNING_P2P | PRE_COPY | PRE_COPY_P2P |
| STOP | STOP | RUNNING_P2P | STOP_COPY | RESUMING | RUNNING_P2P | RUNNING_P2P | RUNNING_P2P |
| RUNNING | RUNNING_P2P | RUNNING | RUNNING_P2P | RUNNING_P2P | RUNNING_P2P | PRE_COPY | RUNNING_P2P |
| STOP_COPY | STOP | STOP | STOP_COPY | STOP | STOP | ERROR | ERROR |
| RESUMING | STOP | STOP | STOP | RESUMING | STOP | STOP | STOP |
| RUNNING_P2P | STOP | RUNNING | STOP | STOP | RUNNING_P2P | RUNNING | PRE_COPY_P2P |
| PRE_COPY | RUNNING | RUNNING | PRE_COPY_P2P | RUNNING | RUNNING | PRE_COPY | PRE_COPY_P2P |
| PRE_COPY_P2P | RUNNING_P2P | RUNNING_P2P | STOP_COPY | RUNNING_P2P | RUNNING_P2P | PRE_COPY | PRE_COPY_P2P |
| ERROR | ERROR | ERROR | ERROR | ERROR | ERROR | ERROR | ERROR |
";

fn by_name(name: &str) -> DeviceState {
    match name {
        "ERROR" => DeviceState::Error,
        "STOP" => DeviceState::Stop,
        "RUNNING" => DeviceState::Running,
        "STOP_COPY" => DeviceState::StopCopy,
        "RESUMING" => DeviceState::Resuming,
        "RUNNING_P2P" => DeviceState::RunningP2p,
        "PRE_COPY" => DeviceState::PreCopy,
        "PRE_COPY_P2P" => DeviceState::PreCopyP2p,
        other => panic!("unknown state {other}"),
    }
}

fn spec_table() -> HashMap<(DeviceState, DeviceState), DeviceState> {
    let mut rows = SPEC_TABLE.lines().filter(|l| l.starts_with('|'));
    let cells = |l: &str| -> Vec<String> {
        l.trim_matches('|')
            .split('|')
            .map(|c| c.trim().to_string())
            .collect()
    };
    let header = cells(rows.next().unwrap());
    let mut t = HashMap::new();
    for row in rows {
        let c = cells(row);
        let cur = by_name(&c[0]);
        for (col, entry) in header.iter().zip(c.iter()).skip(1) {
            t.insert((cur, by_name(col)), by_name(entry));
        }
    }
    assert_eq!(t.len(), 8 * 7);
    t
}

/// Flag rules of SPEC §1, written out.
fn oracle_supported(s: DeviceState, f: u64) -> bool {
    let (sc, p2p, pre) = (f & 1 != 0, f & 2 != 0, f & 4 != 0);
    match s {
        DeviceState::Error => true,
        DeviceState::Stop
        | DeviceState::Running
        | DeviceState::StopCopy
        | DeviceState::Resuming => sc,
        DeviceState::RunningP2p => sc && p2p,
        DeviceState::PreCopy => sc && pre,
        DeviceState::PreCopyP2p => sc && p2p && pre,
    }
}

fn oracle(cur: DeviceState, new: DeviceState, f: u64) -> Result<DeviceState, Errno> {
    let t = spec_table();
    if !oracle_supported(cur, f) || !oracle_supported(new, f) || new == DeviceState::Error {
        return Err(Errno::EINVAL);
    }
    if cur == DeviceState::Error {
        return Err(Errno::EINVAL);
    }
    let mut next = t[&(cur, new)];
    while !oracle_supported(next, f) {
        next = t[&(next, new)];
    }
    if next == DeviceState::Error {
        Err(Errno::EINVAL)
    } else {
        Ok(next)
    }
}

const FLAG_SETS: [u64; 4] = [0b001, 0b011, 0b101, 0b111];

#[test]
fn next_state_matches_spec_oracle_exhaustively() {
    let mut checked = 0;
    for f in FLAG_SETS {
        let flags = MigrationFlags::try_from(f).unwrap();
        for cur in DeviceState::ALL {
            for new in DeviceState::ALL {
                assert_eq!(
                    next_state(cur, new, flags),
                    oracle(cur, new, f),
                    "cur={cur} new={new} flags={flags}"
                );
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 4 * 8 * 8);
}

/// The single arcs of the uAPI (vfio.h's list), including the combination arcs that exist only
/// when P2P is not supported.
fn arcs(f: u64) -> Vec<(DeviceState, DeviceState)> {
    use DeviceState::*;
    let mut a = vec![
        (Stop, StopCopy),
        (Stop, Resuming),
        (StopCopy, Stop),
        (Resuming, Stop),
        (Running, PreCopy),
        (PreCopy, Running),
        (Stop, RunningP2p),
        (RunningP2p, Stop),
        (RunningP2p, Running),
        (Running, RunningP2p),
        (PreCopy, PreCopyP2p),
        (PreCopyP2p, PreCopy),
        (PreCopyP2p, RunningP2p),
        (RunningP2p, PreCopyP2p),
        (PreCopyP2p, StopCopy),
    ];
    if f & 2 == 0 {
        a.extend([(Running, Stop), (Stop, Running), (PreCopy, StopCopy)]);
    }
    a.retain(|(x, y)| oracle_supported(*x, f) && oracle_supported(*y, f));
    a
}

fn interior_allowed(s: DeviceState, start: DeviceState) -> bool {
    match s {
        // A session state is never crossed: its data would be lost or mixed.
        DeviceState::StopCopy | DeviceState::Resuming => false,
        // PRE_COPY_P2P may be crossed only inside one save session (PRE_COPY → STOP_COPY on a
        // P2P device): the stream stays open end to end, so no data passes through a state
        // that would otherwise have started or ended a session.
        DeviceState::PreCopy | DeviceState::PreCopyP2p => start.is_saving(),
        _ => true,
    }
}

fn shortest(start: DeviceState, goal: DeviceState, f: u64) -> Option<usize> {
    let arcs = arcs(f);
    let mut dist = HashMap::from([(start, 0usize)]);
    let mut q = VecDeque::from([start]);
    while let Some(s) = q.pop_front() {
        if s == goal {
            return Some(dist[&s]);
        }
        if s != start && !interior_allowed(s, start) {
            continue;
        }
        for &(x, y) in &arcs {
            if x == s && !dist.contains_key(&y) {
                dist.insert(y, dist[&s] + 1);
                q.push_back(y);
            }
        }
    }
    None
}

#[test]
fn every_walk_is_shortest_and_never_crosses_a_session_state() {
    for f in FLAG_SETS {
        let flags = MigrationFlags::try_from(f).unwrap();
        let arcs = arcs(f);
        for cur in DeviceState::ALL
            .into_iter()
            .filter(|s| *s != DeviceState::Error && oracle_supported(*s, f))
        {
            for new in DeviceState::ALL
                .into_iter()
                .filter(|s| *s != DeviceState::Error && oracle_supported(*s, f))
            {
                match path(cur, new, flags) {
                    Ok(p) => {
                        let mut at = cur;
                        for &s in &p {
                            assert!(arcs.contains(&(at, s)), "{at}->{s} is not an arc ({flags})");
                            at = s;
                        }
                        for &s in &p[..p.len().saturating_sub(1)] {
                            assert!(
                                interior_allowed(s, cur),
                                "{cur}->{new} crosses {s} ({flags}): {p:?}"
                            );
                        }
                        assert_eq!(Some(p.len()), shortest(cur, new, f), "{cur}->{new} {flags}");
                    }
                    Err(e) => {
                        assert_eq!(e, Errno::EINVAL);
                        // Refused only where no allowed path exists: STOP_COPY → PRE_COPY*.
                        assert_eq!(cur, DeviceState::StopCopy, "{cur}->{new} refused");
                        assert!(matches!(
                            new,
                            DeviceState::PreCopy | DeviceState::PreCopyP2p
                        ));
                    }
                }
            }
        }
    }
}

#[test]
fn p2p_device_stops_through_running_p2p() {
    let f = MigrationFlags::STOP_COPY | MigrationFlags::P2P;
    assert_eq!(
        path(DeviceState::Running, DeviceState::Stop, f).unwrap(),
        vec![DeviceState::RunningP2p, DeviceState::Stop]
    );
    assert_eq!(
        path(DeviceState::Running, DeviceState::StopCopy, f).unwrap(),
        vec![
            DeviceState::RunningP2p,
            DeviceState::Stop,
            DeviceState::StopCopy
        ]
    );
    // Without P2P the same request is one arc.
    assert_eq!(
        path(
            DeviceState::Running,
            DeviceState::Stop,
            MigrationFlags::STOP_COPY
        )
        .unwrap(),
        vec![DeviceState::Stop]
    );
}

#[test]
fn raw_values_are_checked() {
    for (raw, s) in (0u32..8).zip(DeviceState::ALL) {
        assert_eq!(DeviceState::try_from(raw), Ok(s));
        assert_eq!(u32::from(s), raw);
    }
    assert_eq!(DeviceState::try_from(8u32), Err(Errno::EINVAL));
    assert_eq!(DeviceState::try_from(0xabcdu32), Err(Errno::EINVAL));
    assert_eq!(DeviceState::try_from(u32::MAX), Err(Errno::EINVAL));
    assert_eq!(MigrationFlags::try_from(0u64), Err(Errno::EINVAL));
    assert_eq!(MigrationFlags::try_from(0b010u64), Err(Errno::EINVAL));
    assert_eq!(MigrationFlags::try_from(0b1001u64), Err(Errno::EINVAL));
    assert_eq!(MigrationFlags::try_from(0xabcdu32), Err(Errno::EINVAL));
    assert_eq!(MigrationFlags::try_from(0b011u64).unwrap().bits(), 3);
}

#[test]
fn values_match_vfio_bindings() {
    use vfio_bindings::bindings::vfio as b;
    let pairs = [
        (
            DeviceState::Error,
            b::vfio_device_mig_state_VFIO_DEVICE_STATE_ERROR,
        ),
        (
            DeviceState::Stop,
            b::vfio_device_mig_state_VFIO_DEVICE_STATE_STOP,
        ),
        (
            DeviceState::Running,
            b::vfio_device_mig_state_VFIO_DEVICE_STATE_RUNNING,
        ),
        (
            DeviceState::StopCopy,
            b::vfio_device_mig_state_VFIO_DEVICE_STATE_STOP_COPY,
        ),
        (
            DeviceState::Resuming,
            b::vfio_device_mig_state_VFIO_DEVICE_STATE_RESUMING,
        ),
        (
            DeviceState::RunningP2p,
            b::vfio_device_mig_state_VFIO_DEVICE_STATE_RUNNING_P2P,
        ),
        (
            DeviceState::PreCopy,
            b::vfio_device_mig_state_VFIO_DEVICE_STATE_PRE_COPY,
        ),
        (
            DeviceState::PreCopyP2p,
            b::vfio_device_mig_state_VFIO_DEVICE_STATE_PRE_COPY_P2P,
        ),
    ];
    for (s, v) in pairs {
        assert_eq!(s as u32, v, "{s}");
    }
    assert_eq!(
        DeviceState::ALL.len() as u32,
        b::vfio_device_mig_state_VFIO_DEVICE_STATE_NR
    );
    assert_eq!(
        MigrationFlags::STOP_COPY.bits(),
        u64::from(b::VFIO_MIGRATION_STOP_COPY)
    );
    assert_eq!(MigrationFlags::P2P.bits(), u64::from(b::VFIO_MIGRATION_P2P));
    assert_eq!(
        MigrationFlags::PRE_COPY.bits(),
        u64::from(b::VFIO_MIGRATION_PRE_COPY)
    );
}
