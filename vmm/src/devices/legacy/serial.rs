//! COM1: a 16550A UART (vm-superio) whose output goes to the console sink and, always, through
//! a scanner that spots the kernel's last words. Without ACPI a power-off is only visible as
//! "reboot: Power down" on the console, and a panic as "Kernel panic - not syncing"; both are
//! printed at KERN_EMERG, so they appear even with `quiet`.

use std::fs::File;
use std::io::{self, Write};
use std::sync::Arc;

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::BusDevice;
use crate::lifecycle::{GuestEvents, StopReason};

/// Raises the UART's interrupt through an irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// What the kernel's console output says about the guest's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelMessage {
    Panic,
    PowerOff,
    Halted,
}

const NEEDLES: [(&[u8], KernelMessage); 3] = [
    (b"Kernel panic - not syncing", KernelMessage::Panic),
    (b"reboot: Power down", KernelMessage::PowerOff),
    (b"reboot: System halted", KernelMessage::Halted),
];
const SCAN_WINDOW: usize = 32;

/// Finds the kernel's panic and power-off messages in a byte stream, however it is split.
#[derive(Debug, Default)]
pub struct KernelMessageScanner {
    tail: Vec<u8>,
}

impl KernelMessageScanner {
    /// Feeds one byte; returns a message when this byte completes one.
    pub fn push(&mut self, byte: u8) -> Option<KernelMessage> {
        if byte == b'\n' || byte == b'\r' {
            self.tail.clear();
            return None;
        }
        if self.tail.len() >= 2 * SCAN_WINDOW {
            self.tail.drain(..SCAN_WINDOW);
        }
        self.tail.push(byte);
        NEEDLES
            .iter()
            .find(|(needle, _)| self.tail.ends_with(needle))
            .map(|(_, message)| *message)
    }
}

/// Where console bytes go.
pub enum ConsoleSink {
    Stdout,
    File(File),
    Discard,
}

/// The UART's output: scanned for kernel messages, then buffered by line into the sink.
pub struct ConsoleOutput {
    sink: ConsoleSink,
    buffer: Vec<u8>,
    scanner: KernelMessageScanner,
    events: Arc<GuestEvents>,
}

const CONSOLE_BUFFER_LIMIT: usize = 4096;

impl ConsoleOutput {
    pub fn new(sink: ConsoleSink, events: Arc<GuestEvents>) -> Self {
        ConsoleOutput {
            sink,
            buffer: Vec::with_capacity(256),
            scanner: KernelMessageScanner::default(),
            events,
        }
    }

    fn flush_buffer(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let result = match &mut self.sink {
            ConsoleSink::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(&self.buffer).and_then(|_| out.flush())
            }
            ConsoleSink::File(file) => file.write_all(&self.buffer),
            ConsoleSink::Discard => Ok(()),
        };
        self.buffer.clear();
        result
    }
}

impl Write for ConsoleOutput {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        for &byte in bytes {
            match self.scanner.push(byte) {
                Some(KernelMessage::Panic) => self.events.record_panic(),
                Some(KernelMessage::PowerOff) | Some(KernelMessage::Halted) => {
                    self.events.request_stop(StopReason::PowerOff)
                }
                None => {}
            }
            if !matches!(self.sink, ConsoleSink::Discard) {
                self.buffer.push(byte);
                if byte == b'\n' || self.buffer.len() >= CONSOLE_BUFFER_LIMIT {
                    // A console that cannot be written must not stop the guest.
                    let _ = self.flush_buffer();
                }
            }
        }
        Ok(bytes.len())
    }

    /// The UART flushes after every byte; the console is written a line at a time instead
    /// (see [`SerialDevice::flush_console`] for the rest at exit).
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// COM1 on the I/O bus.
pub struct SerialDevice {
    serial: Serial<IrqTrigger, NoEvents, ConsoleOutput>,
}

impl SerialDevice {
    pub fn new(interrupt: EventFd, output: ConsoleOutput) -> Self {
        SerialDevice {
            serial: Serial::new(IrqTrigger(interrupt), output),
        }
    }

    /// Writes out whatever partial line is still buffered.
    pub fn flush_console(&mut self) {
        let _ = self.serial.writer_mut().flush_buffer();
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match u8::try_from(offset) {
            Ok(offset) => self.serial.read(offset),
            Err(_) => 0xff,
        };
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(offset), Some(&value)) = (u8::try_from(offset), data.first()) {
            // An interrupt that cannot be raised is not the guest's fault; keep going.
            let _ = self.serial.write(offset, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(text: &[u8]) -> Vec<KernelMessage> {
        let mut scanner = KernelMessageScanner::default();
        text.iter().filter_map(|b| scanner.push(*b)).collect()
    }

    #[test]
    fn panic_and_power_off_are_found_inside_longer_lines() {
        assert_eq!(
            scan(b"[    1.0] Kernel panic - not syncing: Attempted to kill init!\n"),
            vec![KernelMessage::Panic]
        );
        assert_eq!(
            scan(b"[ 2.1] reboot: Power down\n"),
            vec![KernelMessage::PowerOff]
        );
        assert_eq!(scan(b"reboot: System halted"), vec![KernelMessage::Halted]);
    }

    #[test]
    fn ordinary_output_and_split_lines_do_not_match() {
        assert!(scan(b"Kernel panic - not\nsyncing\n").is_empty());
        assert!(scan(b"reboot: Restarting system\n").is_empty());
        assert!(scan(&[b'x'; 10_000]).is_empty());
    }

    #[test]
    fn long_prefix_does_not_hide_the_message() {
        let mut line = vec![b'.'; 1000];
        line.extend_from_slice(b"Kernel panic - not syncing");
        assert_eq!(scan(&line), vec![KernelMessage::Panic]);
    }

    #[test]
    fn console_output_reports_to_the_lifecycle_even_when_discarded() {
        let events = Arc::new(GuestEvents::new().expect("eventfd"));
        let mut output = ConsoleOutput::new(ConsoleSink::Discard, events.clone());
        output
            .write_all(b"Kernel panic - not syncing: x\n")
            .expect("write");
        assert!(events.panicked());
        output.write_all(b"reboot: Power down\n").expect("write");
        assert_eq!(events.stop_reason(), Some(StopReason::PowerOff));
    }

    #[test]
    fn serial_bytes_reach_a_console_file() {
        let events = Arc::new(GuestEvents::new().expect("eventfd"));
        let path = std::env::temp_dir().join(format!("vpod-serial-test-{}", std::process::id()));
        let file = File::create(&path).expect("temp file");
        let irq = EventFd::new(0).expect("eventfd");
        let mut serial =
            SerialDevice::new(irq, ConsoleOutput::new(ConsoleSink::File(file), events));
        for byte in b"hello\npartial" {
            serial.write(0, &[*byte]);
        }
        serial.flush_console();
        let text = std::fs::read_to_string(&path).expect("console file");
        let _ = std::fs::remove_file(&path);
        assert_eq!(text, "hello\npartial");
    }
}
