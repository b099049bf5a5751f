//! A minimal i8042 keyboard controller. Its one real job is the reset line: Linux reboots
//! with `reboot=k` by writing 0xfe to port 0x64. It also answers the controller commands
//! Linux's driver issues while probing (read/write the configuration byte, self-tests), so
//! that probing never waits for a timeout.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::devices::BusDevice;
use crate::lifecycle::{GuestEvents, StopReason};

const DATA_OFFSET: u64 = 0;
const COMMAND_OFFSET: u64 = 4;

const STATUS_OUTPUT_FULL: u8 = 0x01;
const STATUS_SYSTEM_FLAG: u8 = 0x04;
/// Keyboard not inhibited (no key lock), else Linux warns "Keylock active".
const STATUS_UNLOCKED: u8 = 0x10;

const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_AUX_DISABLE: u8 = 0xa7;
const CMD_AUX_ENABLE: u8 = 0xa8;
const CMD_AUX_TEST: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_KBD_DISABLE: u8 = 0xad;
const CMD_KBD_ENABLE: u8 = 0xae;
const CMD_READ_OUTPUT_PORT: u8 = 0xd0;
const CMD_WRITE_OUTPUT_PORT: u8 = 0xd1;
const CMD_RESET_CPU: u8 = 0xfe;

const SELF_TEST_PASSED: u8 = 0x55;
const PORT_TEST_PASSED: u8 = 0x00;
const KEYBOARD_ACK: u8 = 0xfa;
/// Configuration byte at power-on: keyboard interrupt enabled, POST passed.
const CTR_DEFAULT: u8 = 0x05;
/// Output port: A20 enabled, not in reset.
const OUTPUT_PORT_DEFAULT: u8 = 0x03;
const OUTPUT_QUEUE_MAX: usize = 16;

pub struct I8042 {
    events: Arc<GuestEvents>,
    ctr: u8,
    output: VecDeque<u8>,
    /// The command whose data byte the next write to port 0x60 carries.
    awaiting_data: Option<u8>,
}

impl I8042 {
    pub fn new(events: Arc<GuestEvents>) -> Self {
        I8042 {
            events,
            ctr: CTR_DEFAULT,
            output: VecDeque::new(),
            awaiting_data: None,
        }
    }

    fn respond(&mut self, byte: u8) {
        if self.output.len() < OUTPUT_QUEUE_MAX {
            self.output.push_back(byte);
        }
    }

    fn command(&mut self, command: u8) {
        match command {
            CMD_READ_CTR => self.respond(self.ctr),
            CMD_WRITE_CTR | CMD_WRITE_OUTPUT_PORT => self.awaiting_data = Some(command),
            CMD_SELF_TEST => self.respond(SELF_TEST_PASSED),
            CMD_KBD_TEST | CMD_AUX_TEST => self.respond(PORT_TEST_PASSED),
            CMD_READ_OUTPUT_PORT => self.respond(OUTPUT_PORT_DEFAULT),
            CMD_RESET_CPU => self.events.request_stop(StopReason::Reset),
            CMD_AUX_DISABLE | CMD_AUX_ENABLE | CMD_KBD_DISABLE | CMD_KBD_ENABLE => {}
            _ => {}
        }
    }

    fn data(&mut self, value: u8) {
        match self.awaiting_data.take() {
            Some(CMD_WRITE_CTR) => self.ctr = value,
            // Bit 0 low on the output port pulses the reset line.
            Some(CMD_WRITE_OUTPUT_PORT) if value & 1 == 0 => {
                self.events.request_stop(StopReason::Reset)
            }
            Some(_) => {}
            // A byte for the keyboard itself: acknowledge it.
            None => self.respond(KEYBOARD_ACK),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            DATA_OFFSET => self.output.pop_front().unwrap_or(0),
            COMMAND_OFFSET => {
                let full = if self.output.is_empty() {
                    0
                } else {
                    STATUS_OUTPUT_FULL
                };
                full | STATUS_SYSTEM_FLAG | STATUS_UNLOCKED
            }
            _ => 0xff,
        };
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        match offset {
            DATA_OFFSET => self.data(value),
            COMMAND_OFFSET => self.command(value),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn controller() -> (I8042, Arc<GuestEvents>) {
        let events = Arc::new(GuestEvents::new().expect("eventfd"));
        (I8042::new(events.clone()), events)
    }

    fn read(dev: &mut I8042, offset: u64) -> u8 {
        let mut data = [0u8; 1];
        dev.read(offset, &mut data);
        data[0]
    }

    #[test]
    fn reset_command_stops_the_vm() {
        let (mut dev, events) = controller();
        dev.write(COMMAND_OFFSET, &[CMD_RESET_CPU]);
        assert_eq!(events.stop_reason(), Some(StopReason::Reset));
    }

    #[test]
    fn status_is_empty_until_a_command_answers() {
        let (mut dev, events) = controller();
        assert_eq!(read(&mut dev, COMMAND_OFFSET) & STATUS_OUTPUT_FULL, 0);
        dev.write(COMMAND_OFFSET, &[CMD_SELF_TEST]);
        assert_ne!(read(&mut dev, COMMAND_OFFSET) & STATUS_OUTPUT_FULL, 0);
        assert_eq!(read(&mut dev, DATA_OFFSET), SELF_TEST_PASSED);
        assert_eq!(read(&mut dev, COMMAND_OFFSET) & STATUS_OUTPUT_FULL, 0);
        assert_eq!(events.stop_reason(), None);
    }

    #[test]
    fn configuration_byte_round_trips() {
        let (mut dev, _) = controller();
        dev.write(COMMAND_OFFSET, &[CMD_WRITE_CTR]);
        dev.write(DATA_OFFSET, &[0x47]);
        dev.write(COMMAND_OFFSET, &[CMD_READ_CTR]);
        assert_eq!(read(&mut dev, DATA_OFFSET), 0x47);
    }

    #[test]
    fn output_port_reset_bit_stops_the_vm() {
        let (mut dev, events) = controller();
        dev.write(COMMAND_OFFSET, &[CMD_WRITE_OUTPUT_PORT]);
        dev.write(DATA_OFFSET, &[0x02]);
        assert_eq!(events.stop_reason(), Some(StopReason::Reset));
    }

    #[test]
    fn endless_keyboard_bytes_do_not_grow_the_queue() {
        let (mut dev, _) = controller();
        for _ in 0..1000 {
            dev.write(DATA_OFFSET, &[0xf4]);
        }
        assert_eq!(dev.output.len(), OUTPUT_QUEUE_MAX);
    }
}
