//! The generic on-pmem device header (P-PM1, P-PM4).
//!
//! The first 4 KiB of every zufs device hold this header, written by `zufs mkfs` and checked by
//! `zusd` before a plugin sees the device: magic, format version, uuid, fs type, feature flags,
//! size and a CRC32C. The filesystem's own data starts at [`DEVICE_HEADER_SIZE`]. Every integer is
//! stored little-endian in fixed-width byte arrays, so the layout is the same on any host.

use core::mem::{offset_of, size_of};

/// Bytes reserved for the header at the start of a device.
pub const DEVICE_HEADER_SIZE: u64 = 4096;
/// Magic at offset 0.
pub const DEVICE_MAGIC: [u8; 8] = *b"ZUFSDEV\x01";
/// Header format version.
pub const DEVICE_VERSION: u32 = 1;
/// Devices are sized in multiples of this (huge-page friendly, as ZUFS required).
pub const DEVICE_ALIGN: u64 = 2 << 20;

/// A little-endian u64 on pmem.
#[repr(transparent)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Le64(pub [u8; 8]);
/// A little-endian u32 on pmem.
#[repr(transparent)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Le32(pub [u8; 4]);

impl Le64 {
    /// Encodes.
    #[must_use]
    pub fn new(v: u64) -> Self {
        Self(v.to_le_bytes())
    }
    /// Decodes.
    #[must_use]
    pub fn get(self) -> u64 {
        u64::from_le_bytes(self.0)
    }
}
impl Le32 {
    /// Encodes.
    #[must_use]
    pub fn new(v: u32) -> Self {
        Self(v.to_le_bytes())
    }
    /// Decodes.
    #[must_use]
    pub fn get(self) -> u32 {
        u32::from_le_bytes(self.0)
    }
}

/// The device header as stored.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceHeader {
    /// [`DEVICE_MAGIC`].
    pub magic: [u8; 8],
    /// [`DEVICE_VERSION`].
    pub version: Le32,
    /// `size_of::<DeviceHeader>()`.
    pub header_size: Le32,
    /// Random id of this device.
    pub uuid: [u8; 16],
    /// Filesystem type name, NUL padded (e.g. "pmemfs").
    pub fs_type: [u8; 16],
    /// Features an older reader may ignore.
    pub feature_compat: Le64,
    /// Features a reader must understand to mount at all.
    pub feature_incompat: Le64,
    /// Features a reader must understand to mount read-write.
    pub feature_ro_compat: Le64,
    /// Device size in bytes recorded at mkfs; must equal the mapped size.
    pub dev_size: Le64,
    /// Creation time, ns since the epoch.
    pub created_ns: Le64,
    /// Reserved, zero.
    pub reserved: [u8; 48],
    /// CRC32C of the header bytes before this field.
    pub checksum: Le32,
    /// Padding to 8 bytes, zero.
    pub pad: Le32,
}

const _: () = {
    assert!(size_of::<DeviceHeader>() == 144);
    assert!(offset_of!(DeviceHeader, version) == 8);
    assert!(offset_of!(DeviceHeader, uuid) == 16);
    assert!(offset_of!(DeviceHeader, fs_type) == 32);
    assert!(offset_of!(DeviceHeader, feature_compat) == 48);
    assert!(offset_of!(DeviceHeader, dev_size) == 72);
    assert!(offset_of!(DeviceHeader, created_ns) == 80);
    assert!(offset_of!(DeviceHeader, checksum) == 136);
};

/// Why a device header was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeviceHeaderError {
    /// Too short to hold a header.
    #[error("device is {0} bytes, too small for a zufs device header")]
    TooSmall(u64),
    /// Not a zufs device.
    #[error("not a zufs device (bad magic); run `zufs mkfs` first")]
    BadMagic,
    /// Unknown format version.
    #[error("device header version {0} is not supported (this build reads version {DEVICE_VERSION})")]
    BadVersion(u32),
    /// Checksum mismatch.
    #[error(
        "device header checksum mismatch (stored {stored:#010x}, computed {computed:#010x}): the header is corrupt"
    )]
    BadChecksum {
        /// Stored value.
        stored: u32,
        /// Computed value.
        computed: u32,
    },
    /// Size mismatch.
    #[error("device header says {recorded} bytes but the device is {actual} bytes")]
    BadSize {
        /// In the header.
        recorded: u64,
        /// Mapped.
        actual: u64,
    },
    /// Wrong fs type.
    #[error("device holds a {found:?} filesystem, not {wanted:?}")]
    WrongFsType {
        /// In the header.
        found: String,
        /// Asked for.
        wanted: String,
    },
    /// Incompatible feature bits.
    #[error("device uses incompatible features {0:#x} this build does not know")]
    Incompatible(u64),
    /// fs type name too long.
    #[error("fs type name {0:?} is longer than 15 bytes")]
    NameTooLong(String),
}

impl DeviceHeader {
    /// A new header for a device of `dev_size` bytes holding `fs_type`.
    ///
    /// # Errors
    /// [`DeviceHeaderError::NameTooLong`].
    pub fn new(fs_type: &str, dev_size: u64, uuid: [u8; 16], created_ns: u64) -> Result<Self, DeviceHeaderError> {
        let mut name = [0u8; 16];
        if fs_type.len() > 15 {
            return Err(DeviceHeaderError::NameTooLong(fs_type.to_owned()));
        }
        name[..fs_type.len()].copy_from_slice(fs_type.as_bytes());
        let mut h = Self {
            magic: DEVICE_MAGIC,
            version: Le32::new(DEVICE_VERSION),
            header_size: Le32::new(u32::try_from(size_of::<Self>()).unwrap_or(0)),
            uuid,
            fs_type: name,
            feature_compat: Le64::default(),
            feature_incompat: Le64::default(),
            feature_ro_compat: Le64::default(),
            dev_size: Le64::new(dev_size),
            created_ns: Le64::new(created_ns),
            reserved: [0; 48],
            checksum: Le32::default(),
            pad: Le32::default(),
        };
        h.checksum = Le32::new(crc32c(&h.to_bytes()[..offset_of!(Self, checksum)]));
        Ok(h)
    }

    /// The stored bytes.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; size_of::<Self>()] {
        let mut b = [0u8; size_of::<Self>()];
        let mut at = 0;
        let mut put = |s: &[u8]| {
            b[at..at + s.len()].copy_from_slice(s);
            at += s.len();
        };
        put(&self.magic);
        put(&self.version.0);
        put(&self.header_size.0);
        put(&self.uuid);
        put(&self.fs_type);
        put(&self.feature_compat.0);
        put(&self.feature_incompat.0);
        put(&self.feature_ro_compat.0);
        put(&self.dev_size.0);
        put(&self.created_ns.0);
        put(&self.reserved);
        put(&self.checksum.0);
        put(&self.pad.0);
        b
    }

    /// Parses and fully validates a header read from a device of `actual_size` bytes.
    ///
    /// # Errors
    /// The first problem found, as a [`DeviceHeaderError`].
    pub fn parse(bytes: &[u8], actual_size: u64) -> Result<Self, DeviceHeaderError> {
        if bytes.len() < size_of::<Self>() || actual_size < DEVICE_HEADER_SIZE {
            return Err(DeviceHeaderError::TooSmall(actual_size));
        }
        let mut at = 0;
        let mut take = |n: usize| {
            let s = &bytes[at..at + n];
            at += n;
            s
        };
        let arr8 = |s: &[u8]| <[u8; 8]>::try_from(s).unwrap_or_default();
        let arr4 = |s: &[u8]| <[u8; 4]>::try_from(s).unwrap_or_default();
        let arr16 = |s: &[u8]| <[u8; 16]>::try_from(s).unwrap_or_default();
        let h = Self {
            magic: arr8(take(8)),
            version: Le32(arr4(take(4))),
            header_size: Le32(arr4(take(4))),
            uuid: arr16(take(16)),
            fs_type: arr16(take(16)),
            feature_compat: Le64(arr8(take(8))),
            feature_incompat: Le64(arr8(take(8))),
            feature_ro_compat: Le64(arr8(take(8))),
            dev_size: Le64(arr8(take(8))),
            created_ns: Le64(arr8(take(8))),
            reserved: <[u8; 48]>::try_from(take(48)).unwrap_or([0; 48]),
            checksum: Le32(arr4(take(4))),
            pad: Le32(arr4(take(4))),
        };
        if h.magic != DEVICE_MAGIC {
            return Err(DeviceHeaderError::BadMagic);
        }
        if h.version.get() != DEVICE_VERSION {
            return Err(DeviceHeaderError::BadVersion(h.version.get()));
        }
        let computed = crc32c(&bytes[..offset_of!(Self, checksum)]);
        if computed != h.checksum.get() {
            return Err(DeviceHeaderError::BadChecksum { stored: h.checksum.get(), computed });
        }
        if h.dev_size.get() != actual_size {
            return Err(DeviceHeaderError::BadSize { recorded: h.dev_size.get(), actual: actual_size });
        }
        if h.feature_incompat.get() != 0 {
            return Err(DeviceHeaderError::Incompatible(h.feature_incompat.get()));
        }
        Ok(h)
    }

    /// The fs type name.
    #[must_use]
    pub fn fs_type_str(&self) -> String {
        let end = self.fs_type.iter().position(|&b| b == 0).unwrap_or(16);
        String::from_utf8_lossy(&self.fs_type[..end]).into_owned()
    }

    /// Checks the fs type.
    ///
    /// # Errors
    /// [`DeviceHeaderError::WrongFsType`].
    pub fn expect_fs_type(&self, wanted: &str) -> Result<(), DeviceHeaderError> {
        let found = self.fs_type_str();
        if found == wanted { Ok(()) } else { Err(DeviceHeaderError::WrongFsType { found, wanted: wanted.to_owned() }) }
    }
}

/// CRC32C (Castagnoli), bitwise: the header is checked once per mount, speed does not matter.
#[must_use]
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0x82F6_3B78 & mask);
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_crc32c_known_vector() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn test_header_round_trip_and_every_flip_detected() {
        let h = DeviceHeader::new("pmemfs", 4 << 20, [7; 16], 42).unwrap();
        let b = h.to_bytes();
        assert_eq!(DeviceHeader::parse(&b, 4 << 20).unwrap(), h);
        for i in 0..b.len() - 4 {
            let mut c = b;
            c[i] ^= 0x10;
            assert!(DeviceHeader::parse(&c, 4 << 20).is_err(), "flip at {i} not detected");
        }
    }

    #[test]
    fn test_header_wrong_size_and_type_refused() {
        let b = DeviceHeader::new("pmemfs", 4 << 20, [1; 16], 0).unwrap().to_bytes();
        assert_eq!(
            DeviceHeader::parse(&b, 8 << 20),
            Err(DeviceHeaderError::BadSize { recorded: 4 << 20, actual: 8 << 20 })
        );
        let h = DeviceHeader::parse(&b, 4 << 20).unwrap();
        assert!(h.expect_fs_type("nullfs").is_err());
        assert_eq!(DeviceHeader::parse(&[0; 144], 4 << 20), Err(DeviceHeaderError::BadMagic));
    }
}
