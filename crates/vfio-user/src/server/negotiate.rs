//! VERSION: the protocol version and the capabilities both sides agree on.

use super::conn::{Conn, Reply};
use super::options::MAX_DMA_MAPS;
use crate::msg::{self, Version};
use crate::sock;
use vfio_core::Errno;

impl Conn<'_> {
    /// Our major, the lower minor, and the subset of the client's capabilities we support
    /// (unknown ones are ignored).
    pub(super) fn version(&mut self, v: Version<'_>) -> Reply {
        if v.major != msg::VERSION_MAJOR {
            return Err(Errno::EOPNOTSUPP);
        }
        let client: serde_json::Value = if v.json.trim().is_empty() {
            serde_json::json!({})
        } else {
            serde_json::from_str(v.json).map_err(|_| Errno::EINVAL)?
        };
        let caps = client.get("capabilities");
        let num = |k: &str| caps.and_then(|c| c.get(k)).and_then(|v| v.as_u64());
        let mut out = serde_json::Map::new();
        let xfer = match num("max_data_xfer_size") {
            Some(v) => {
                let v = (v.min(u64::from(u32::MAX)) as u32).min(self.opts.max_data_xfer);
                out.insert("max_data_xfer_size".into(), v.into());
                v
            }
            None => msg::DEFAULT_MAX_DATA_XFER.min(self.opts.max_data_xfer),
        };
        if xfer == 0 {
            return Err(Errno::EINVAL);
        }
        if let Some(v) = num("max_msg_fds") {
            out.insert("max_msg_fds".into(), v.min(sock::MAX_FDS as u64).into());
        }
        if let Some(v) = num("max_dma_maps") {
            out.insert("max_dma_maps".into(), v.min(MAX_DMA_MAPS as u64).into());
        }
        if let Some(v) = num("pgsizes") {
            out.insert("pgsizes".into(), (v & 4096).max(4096).into());
        }
        if let Some(m) = caps.and_then(|c| c.get("migration")) {
            if self.dev.migration().is_some() && m.is_object() {
                out.insert("migration".into(), serde_json::json!({ "pgsize": 4096 }));
            }
        }
        self.max_xfer = xfer;
        self.negotiated = true;
        let text = serde_json::json!({ "capabilities": out }).to_string();
        let reply = Version {
            major: msg::VERSION_MAJOR,
            minor: v.minor.min(msg::VERSION_MINOR),
            json: &text,
        };
        reply.emit(&mut self.out);
        Ok(None)
    }
}
