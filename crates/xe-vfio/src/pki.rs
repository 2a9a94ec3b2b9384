//! `xe-vfio certs DIR HOST…`: a CA and one certificate per host for `migrate --to tcp://` and
//! `receive` — for a test setup or the benchmark; production sites use their own PKI.

use crate::util::{CliError, Context};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

fn params(names: Vec<String>) -> Result<CertificateParams, CliError> {
    CertificateParams::new(names).map_err(|e| CliError::new("certificate parameters").cause(e))
}

/// Writes `DIR/ca.pem`, `DIR/ca.key` and, per host, `DIR/HOST.pem`, `DIR/HOST.key` (a DNS name
/// or an IP address in its subjectAltName; usable as server and as client). Valid `days` days.
/// Returns the files written.
pub fn make(dir: &Path, hosts: &[String], days: i64) -> Result<Vec<PathBuf>, CliError> {
    std::fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
    let now = time_now();
    let until = now + days * 86_400;
    let mut ca = params(Vec::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "xe-vfio CA");
    set_validity(&mut ca, now, until)?;
    let ca_key = KeyPair::generate().map_err(|e| CliError::new("a CA key").cause(e))?;
    let ca_cert = ca
        .self_signed(&ca_key)
        .map_err(|e| CliError::new("the CA certificate").cause(e))?;
    let mut written = Vec::new();
    let mut write = |name: &str, text: &str| -> Result<(), CliError> {
        let p = dir.join(name);
        // Keys readable by their owner only.
        let mode = if name.ends_with(".key") { 0o600 } else { 0o644 };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&p)
            .ctx(|| format!("writing {}", p.display()))?;
        f.write_all(text.as_bytes())
            .ctx(|| format!("writing {}", p.display()))?;
        written.push(p);
        Ok(())
    };
    write("ca.pem", &ca_cert.pem())?;
    write("ca.key", &ca_key.serialize_pem())?;
    let issuer = Issuer::new(ca, ca_key);
    for h in hosts {
        let mut p = params(vec![h.clone()])?;
        p.distinguished_name.push(DnType::CommonName, h.as_str());
        set_validity(&mut p, now, until)?;
        let key = KeyPair::generate().map_err(|e| CliError::new("a host key").cause(e))?;
        let cert = p
            .signed_by(&key, &issuer)
            .map_err(|e| CliError::new(format!("the certificate of {h}")).cause(e))?;
        write(&format!("{h}.pem"), &cert.pem())?;
        write(&format!("{h}.key"), &key.serialize_pem())?;
    }
    Ok(written)
}

fn time_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn set_validity(p: &mut CertificateParams, from: i64, until: i64) -> Result<(), CliError> {
    let t = |s: i64| {
        rcgen::date_time_ymd(1970, 1, 1)
            .checked_add(
                std::time::Duration::from_secs(s.max(0) as u64)
                    .try_into()
                    .map_err(|_| CliError::new("a validity date out of range"))?,
            )
            .ok_or_else(|| CliError::new("a validity date out of range"))
    };
    // An hour of slack for clocks a little behind.
    p.not_before = t(from - 3600)?;
    p.not_after = t(until)?;
    Ok(())
}
