//! virtio-blk serials (at most 20 bytes) naming a pod's disks to its agent.

use vpod_image::DiffId;

/// The longest serial virtio-blk carries.
pub const MAX_SERIAL_LEN: usize = 20;

/// A layer's disk: "l-" and the first 18 hex digits (72 bits) of its diffID, so the same
/// layer has the same serial in every pod and two layers collide only by accident of 2^-72.
pub fn layer_serial(diff_id: &DiffId) -> String {
    let hex = diff_id.hex();
    format!("l-{}", &hex[..MAX_SERIAL_LEN - 2])
}

/// The pod's writable disk: "vpod-rw-" and up to 12 characters of the sandbox id.
pub fn writable_serial(sandbox_id: &str) -> String {
    let short: String = sandbox_id.chars().take(MAX_SERIAL_LEN - 8).collect();
    format!("vpod-rw-{short}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layer_serial_is_20_bytes_from_the_diff_id() {
        let diff = DiffId::of_bytes(b"layer");
        let serial = layer_serial(&diff);
        assert_eq!(serial.len(), MAX_SERIAL_LEN);
        assert!(serial.starts_with("l-"));
        assert!(diff.hex().starts_with(&serial[2..]));
        assert_eq!(serial, layer_serial(&DiffId::of_bytes(b"layer")));
        assert_ne!(serial, layer_serial(&DiffId::of_bytes(b"other")));
    }

    #[test]
    fn a_writable_serial_fits_however_long_the_id() {
        assert_eq!(writable_serial("abc"), "vpod-rw-abc");
        let long = writable_serial("0123456789abcdef0123");
        assert_eq!(long, "vpod-rw-0123456789ab");
        assert_eq!(long.len(), MAX_SERIAL_LEN);
    }
}
