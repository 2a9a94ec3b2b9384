//! Server settings and limits.

use crate::msg;

/// Server settings.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// The largest `max_data_xfer_size` this server agrees to.
    pub max_data_xfer: u32,
    /// Offer BAR file descriptors for mmap when the device has them.
    pub mmap: bool,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            max_data_xfer: msg::DEFAULT_MAX_DATA_XFER,
            mmap: true,
        }
    }
}

/// Most DMA mappings tracked per client (`max_dma_maps`).
pub const MAX_DMA_MAPS: usize = 65535;
