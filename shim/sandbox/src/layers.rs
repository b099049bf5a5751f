//! Which layer disks are attached to which slots, and how many containers use each: a layer
//! shared by two containers is attached once and detached when the last one goes.

use std::collections::HashMap;

/// Attached layer disks by serial.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct AttachedLayers {
    by_serial: HashMap<String, Attached>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Attached {
    slot: u32,
    users: usize,
}

impl AttachedLayers {
    /// Counts one more user of `serial` if it is attached; false if it must be attached.
    pub fn acquire(&mut self, serial: &str) -> bool {
        match self.by_serial.get_mut(serial) {
            Some(attached) => {
                attached.users += 1;
                true
            }
            None => false,
        }
    }

    /// Records `serial` as just attached to `slot`, with one user.
    pub fn attached(&mut self, serial: &str, slot: u32) {
        self.by_serial
            .insert(serial.to_string(), Attached { slot, users: 1 });
    }

    /// Drops one user of `serial`; the slot to detach when it was the last.
    pub fn release(&mut self, serial: &str) -> Option<u32> {
        let attached = self.by_serial.get_mut(serial)?;
        attached.users -= 1;
        if attached.users > 0 {
            return None;
        }
        self.by_serial.remove(serial).map(|a| a.slot)
    }

    /// Whether `serial` is attached.
    pub fn contains(&self, serial: &str) -> bool {
        self.by_serial.contains_key(serial)
    }

    /// How many layer disks are attached.
    pub fn len(&self) -> usize {
        self.by_serial.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_layer_is_detached_after_its_last_user() {
        let mut layers = AttachedLayers::default();
        assert!(!layers.acquire("l-a"));
        layers.attached("l-a", 3);
        assert!(layers.acquire("l-a"));
        assert_eq!(layers.release("l-a"), None);
        assert_eq!(layers.release("l-a"), Some(3));
        assert_eq!(layers.len(), 0);
        assert_eq!(layers.release("l-a"), None);
    }
}
