//! The control socket's wire header. The messages themselves (JSON) and their encoding live in
//! the `zus-channel` crate; only the fixed header is ABI.

/// Fixed header of every control message.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable)]
pub struct CtlHeader {
    /// [`crate::ZUS_MAGIC`].
    pub magic: u64,
    /// [`crate::ZUS_ABI_VERSION`].
    pub abi_version: u32,
    /// Length of the JSON body that follows.
    pub body_len: u32,
}

crate::ops::pod_impl!(CtlHeader = 16);

/// Largest control message.
pub const MAX_CTL_MSG: usize = 64 * 1024;
