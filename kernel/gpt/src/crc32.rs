//! The GPT's CRC32 (UEFI 2.10 appendix F): IEEE 802.3, polynomial
//! 0x04C11DB7 reflected as 0xEDB88320, initial value and final XOR all
//! ones, the CRC zlib computes (`CRC-32/ISO-HDLC`).

/// The byte-at-a-time lookup table, built at compile time.
const TABLE: [u32; 256] = table();

const fn table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut n = 0;
    while n < 256 {
        let mut c = n as u32;
        let mut bit = 0;
        while bit < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            bit += 1;
        }
        table[n] = c;
        n += 1;
    }
    table
}

/// A CRC32 computed over data given in pieces.
#[derive(Clone, Copy, Debug)]
pub struct Crc32(u32);

impl Crc32 {
    /// A CRC over no data yet.
    pub const fn new() -> Self {
        Self(0xFFFF_FFFF)
    }

    /// Adds `data` to the CRC.
    pub fn update(&mut self, data: &[u8]) {
        for &byte in data {
            let index = usize::from((self.0 as u8) ^ byte);
            self.0 = (self.0 >> 8) ^ TABLE.get(index).copied().unwrap_or(0);
        }
    }

    /// The CRC of everything given.
    pub const fn finalize(self) -> u32 {
        !self.0
    }
}

impl Default for Crc32 {
    fn default() -> Self {
        Self::new()
    }
}

/// The CRC32 of `data`.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = Crc32::new();
    crc.update(data);
    crc.finalize()
}
