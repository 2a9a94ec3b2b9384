//! The data path over plain TCP between vfio-user VFs: the bytes of the VFs' streams go from
//! the source VF's socket into the connection, and from the connection into the destination
//! VF's socket, through a pipe (`splice(2)`, [`Splicer`]) — never through this process's
//! memory. The frame headers, the vfio-user headers and every length are still read, checked
//! and written here; only the byte counts they announce are spliced. A kernel VFIO device on
//! either side takes the buffered path instead.
//!
//! Over TLS the destination takes the same path ([`take_streams`] over [`Bodies`]), with the
//! records decrypted into buffers of this process and the plaintext lent from there to the
//! VF's socket (see `tls` and `lend`: each body's [`Ticket`] comes back when the VF answers
//! its write); the source sends through the buffered path (the bytes must pass through this
//! process to be encrypted either way).
//!
//! Requests are kept in flight on every VF, on both sides: the source VFs prepare their next
//! chunks while this one crosses the link ([`MigReads`]), and the destination VFs take the
//! next frame while their answers to the last travel back.
//!
//! A failure leaves requests unanswered or a message half passed on some VF's connection:
//! every error from here is marked out of step, so the abort path reopens the VFs'
//! connections before resuming (source) or resetting (destination) them.

use super::lend::{Ticket, NOTHING_LENT};
use super::{peer_error, proto, recv_header, recv_payload, send};
use crate::ops::Dev;
use crate::util::{client_error, CliError};
use mig_net::{kind, Header, MAX_DATA};
use rustix::fd::{AsFd, BorrowedFd};
use std::collections::VecDeque;
use std::io::{self, Read};
use std::net::TcpStream;
use vfio_user::relay::DEPTH;
use vfio_user::splice::{PassError, Splicer};
use vfio_user::{Client, ClientError, MigReads, Pacer};

/// Whether every VF of `devs` is served over vfio-user (their data can be spliced).
pub(super) fn all_vfio_user(devs: &mut [Dev<'_>]) -> bool {
    devs.iter_mut().all(|d| d.c.client().is_some())
}

/// A failure the abort path must recover from by reopening the VFs' connections.
fn out_of_step(mut e: CliError) -> CliError {
    e.in_step = false;
    e
}

fn client<'a>(d: &'a mut Dev<'_>) -> Result<(&'a str, &'a mut Client), CliError> {
    let who = d.who.as_str();
    match d.c.client() {
        Some(c) => Ok((who, c)),
        None => Err(CliError::new(format!("{who}: not a vfio-user device"))),
    }
}

/// The source's stop-copy streams: one reply of each VF in turn, its data spliced into the
/// connection behind its DATA frame's header, until every VF's END. `totals` counts each VF's
/// bytes (it goes on from the pre-copy rounds); `pace` caps the rate. With TLS in the kernel,
/// `limit` is the send key's record limit, checked after each frame.
pub(super) fn send_streams(
    devs: &mut [Dev<'_>],
    tcp: &TcpStream,
    totals: &mut [u64],
    pace: &mut Option<Pacer>,
    limit: Option<u64>,
) -> Result<(), CliError> {
    let mut splicer = Splicer::new();
    let mut reads: Vec<MigReads> = devs
        .iter()
        .map(|d| MigReads::new(d.c.chunk().min(MAX_DATA as usize), None))
        .collect();
    let mut ended = vec![false; devs.len()];
    while ended.iter().any(|e| !e) {
        for (i, d) in devs.iter_mut().enumerate() {
            if ended[i] {
                continue;
            }
            let at = totals[i];
            let (who, c) = client(d)?;
            let broke = |e: ClientError| {
                let what = format!("{who}: reading migration data at byte {at}");
                out_of_step(client_error(what, &e))
            };
            reads[i].ask(c).map_err(broke)?;
            let head = reads[i].next(c).map_err(broke)?;
            let n = head.map_or(0, |h| h.data);
            if n > 0 {
                let h = Header {
                    kind: kind::DATA,
                    vf: i as u16,
                    len: n as u32,
                };
                match splicer.pass(c.socket().as_fd(), tcp.as_fd(), &h.emit(), n) {
                    Ok(()) => {}
                    Err(PassError::Source(e)) => return Err(broke(e.into())),
                    Err(PassError::Destination { err, .. }) => {
                        let e = CliError::new(format!("sending to the destination: {err}"));
                        return Err(out_of_step(e));
                    }
                }
                totals[i] += n as u64;
                if let Some(p) = pace {
                    p.account(n);
                }
                if let Some(l) = limit {
                    super::ktls::check_sent(tcp, l).map_err(|e| {
                        out_of_step(CliError::new(format!("sending to the destination: {e}")))
                    })?;
                }
            }
            if let Some(h) = head {
                c.discard(h.padding).map_err(broke)?;
            }
            if reads[i].ended(n) {
                reads[i].finish(c).map_err(broke)?;
                let mut w = tcp;
                send(&mut w, kind::END, i as u16, &totals[i].to_le_bytes())
                    .map_err(|e| out_of_step(CliError::new(format!("sending END: {e}"))))?;
                ended[i] = true;
            }
        }
    }
    Ok(())
}

/// Where the destination's frames come from, and how a frame's bytes go on into a VF.
pub(super) trait Bodies: Read {
    /// Sends `head`, then the stream's next `n` bytes, to the VF socket `to`: in pieces as
    /// they come, or (`whole`, for a VF that reads a body with one `recv`) with one
    /// `sendmsg`. `n` is bounded by the caller (a frame's checked length).
    fn pass(
        &mut self,
        to: BorrowedFd<'_>,
        head: &[u8],
        n: usize,
        whole: bool,
    ) -> Result<Ticket, PassError>;

    /// The VF answered the write whose body went with `ticket` (it has read the body).
    fn answered(&mut self, _ticket: Ticket) {}
}

/// Plain TCP: bodies spliced (or copied through a buffer for a VF that needs them whole).
pub(super) struct Plain<'a> {
    tcp: &'a TcpStream,
    /// TLS in the kernel: records other than data are read with their type (see `ktls`).
    kernel_tls: bool,
    /// The peer's close_notify came (kernel TLS).
    closed: bool,
    splicer: Splicer,
    copier: Splicer,
}

impl<'a> Plain<'a> {
    pub(super) fn new(tcp: &'a TcpStream, kernel_tls: bool) -> Plain<'a> {
        Plain {
            tcp,
            kernel_tls,
            closed: false,
            splicer: Splicer::new(),
            copier: Splicer::copying(),
        }
    }
}

impl Read for Plain<'_> {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        if self.kernel_tls {
            return super::ktls::recv(self.tcp, b, &mut self.closed);
        }
        (&mut &*self.tcp).read(b)
    }
}

impl Bodies for Plain<'_> {
    fn pass(
        &mut self,
        to: BorrowedFd<'_>,
        head: &[u8],
        n: usize,
        whole: bool,
    ) -> Result<Ticket, PassError> {
        let m = if whole {
            &mut self.copier
        } else {
            &mut self.splicer
        };
        m.pass(self.tcp.as_fd(), to, head, n)?;
        Ok(NOTHING_LENT)
    }
}

/// The destination's side: DATA frames passed into their VFs as MIG_DATA_WRITE, until every
/// VF's END; returns the bytes the VFs accepted. An END must count exactly the bytes its VF
/// accepted.
pub(super) fn take_streams(devs: &mut [Dev<'_>], src: &mut dyn Bodies) -> Result<u64, CliError> {
    let n = devs.len();
    // The sizes (and tickets) of each VF's writes not answered yet, and the bytes it accepted.
    let mut writes = vec![VecDeque::<(usize, Ticket)>::new(); n];
    let mut totals = vec![0u64; n];
    let mut ended = vec![false; n];
    while ended.iter().any(|e| !e) {
        let h = recv_header(src).map_err(|e| out_of_step(e.context("receiving the streams")))?;
        let vf = usize::from(h.vf);
        match h.kind {
            kind::DATA | kind::END if vf >= n || ended[vf] => {
                return Err(out_of_step(proto(format!(
                    "a frame for VF {vf}, which is not (or no longer) in this migration"
                ))));
            }
            kind::DATA => {
                // One MIG_DATA_WRITE per piece the VF's connection takes at once.
                let mut left = h.len as usize;
                while left > 0 {
                    let d = &mut devs[vf];
                    let at = totals[vf] + writes[vf].iter().map(|w| w.0).sum::<usize>() as u64;
                    // Pieces into the VFs that read a body in pieces, whole messages into the
                    // others (see `Dev::takes_spliced_bodies`).
                    let whole = !d.takes_spliced_bodies();
                    let (who, c) = client(d)?;
                    let len = left.min(c.max_xfer() as usize);
                    let head = c.mig_data_write_head(len);
                    let ticket = match src.pass(c.socket().as_fd(), &head, len, whole) {
                        Ok(t) => t,
                        Err(PassError::Source(e)) => {
                            let e = proto(format!("receiving the streams: {e}"));
                            return Err(out_of_step(e));
                        }
                        Err(PassError::Destination { err, .. }) => {
                            let what = format!("{who}: writing migration data at byte {at}");
                            return Err(out_of_step(CliError::new(what).cause(err)));
                        }
                    };
                    left -= len;
                    writes[vf].push_back((len, ticket));
                    take_answers(d, &mut writes[vf], &mut totals[vf], DEPTH - 1, src)?;
                }
            }
            kind::END => {
                let p = recv_payload(src, &h).map_err(out_of_step)?;
                let total = mig_net::parse_end(&p)
                    .map_err(|e| out_of_step(proto("a malformed END").cause(e)))?;
                take_answers(&mut devs[vf], &mut writes[vf], &mut totals[vf], 0, src)?;
                if total != totals[vf] {
                    return Err(out_of_step(proto(format!(
                        "VF {vf}: the source sent {total} bytes, {} arrived",
                        totals[vf]
                    ))));
                }
                ended[vf] = true;
            }
            kind::ERROR => {
                let p = recv_payload(src, &h).map_err(out_of_step)?;
                return Err(out_of_step(peer_error(&p).context("the source aborted")));
            }
            k => return Err(out_of_step(proto(format!("frame kind {k} in the streams")))),
        }
    }
    Ok(totals.iter().sum())
}

/// Takes VF `d`'s answers to its writes until at most `keep` are in flight, counting the bytes
/// it accepted and giving their bodies' tickets back to `src`.
fn take_answers(
    d: &mut Dev<'_>,
    writes: &mut VecDeque<(usize, Ticket)>,
    total: &mut u64,
    keep: usize,
    src: &mut dyn Bodies,
) -> Result<(), CliError> {
    let (who, c) = client(d)?;
    while writes.len() > keep {
        c.recv_mig_data_write_reply().map_err(|e| {
            let what = format!("{who}: writing migration data at byte {total}");
            out_of_step(client_error(what, &e))
        })?;
        let (len, ticket) = writes.pop_front().unwrap_or((0, NOTHING_LENT));
        src.answered(ticket);
        *total += len as u64;
    }
    Ok(())
}
