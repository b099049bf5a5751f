//! The local terminal on our stdin, for `vpod exec -t`: whether there is one, its window
//! size, and raw mode for the length of a session.

use std::io::IsTerminal;

use rustix::termios::{self, OptionalActions, Termios};
use vpod_proto::streaming::TerminalSize;

/// Whether our stdin is a terminal.
pub fn stdin_is_terminal() -> bool {
    std::io::stdin().is_terminal()
}

/// The window size of the terminal on our stdin; `None` when it is not one or reports no
/// size (0 x 0, as a terminal that was never sized does).
pub fn window_size() -> Option<TerminalSize> {
    let size = termios::tcgetwinsize(std::io::stdin()).ok()?;
    (size.ws_col > 0 && size.ws_row > 0).then_some(TerminalSize {
        width: size.ws_col,
        height: size.ws_row,
    })
}

/// The terminal on our stdin in raw mode: keys reach the process as typed (no echo, no
/// line editing, no signals from ^C or ^Z) and its output is shown as it comes. Dropping
/// this puts back the settings it found, which covers every way out of a session: its
/// end, an error, a signal that ends it, a panic that unwinds.
pub struct RawMode {
    saved: Termios,
}

impl RawMode {
    pub fn enable() -> std::io::Result<RawMode> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(&stdin)?;
        let mut raw = saved.clone();
        raw.make_raw();
        termios::tcsetattr(&stdin, OptionalActions::Now, &raw)?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // Nothing better to do if the terminal went away meanwhile.
        let _ = termios::tcsetattr(std::io::stdin(), OptionalActions::Now, &self.saved);
    }
}
