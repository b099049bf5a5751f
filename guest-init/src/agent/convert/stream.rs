//! The streaming calls' messages (Exec, Attach, PortForward) to the agent's own types and
//! back, and the port-forward's errors to gRPC status codes.

use tonic::Status;
use vpod_proto::{error_chain, v1};

use super::{container_id, env, invalid, FieldError};
use crate::agent::container::{AttachRequest, ExecStreamRequest};
use crate::agent::portforward::{ForwardInput, ForwardOutput, PortForwardError};
use crate::agent::process_io::{ProcessInput, ProcessOutput};
use crate::agent::pty::TerminalSize;
use crate::agent::reaper::ExitStatus;
use crate::agent::stdio::Stream;

/// Sizes beyond a terminal's 16 bits are clamped.
pub fn terminal_size(size: Option<&v1::TerminalSize>) -> TerminalSize {
    let cells = |n: u32| u16::try_from(n).unwrap_or(u16::MAX);
    size.map_or_else(TerminalSize::default, |s| TerminalSize {
        width: cells(s.width),
        height: cells(s.height),
    })
}

/// The first message of an Exec: the container's id and what to run.
pub fn exec_start(input: Option<v1::ExecInput>) -> Result<(String, ExecStreamRequest), FieldError> {
    let Some(v1::exec_input::Input::Start(start)) = input.and_then(|i| i.input) else {
        return Err(invalid("start", "the first message must be start"));
    };
    let id = container_id(&start.container_id, "container_id")?;
    if start.args.is_empty() || start.args[0].is_empty() {
        return Err(invalid("args", "the program is missing"));
    }
    if !start.cwd.is_empty() && !start.cwd.starts_with('/') {
        return Err(invalid(
            "cwd",
            format!("{:?} is not an absolute path", start.cwd),
        ));
    }
    let request = ExecStreamRequest {
        env: env(&start.env, "env")?,
        args: start.args,
        cwd: start.cwd,
        terminal: start
            .tty
            .then(|| terminal_size(start.terminal_size.as_ref())),
        stdin: start.stdin,
    };
    Ok((id, request))
}

/// Every later message of an Exec.
pub fn exec_input(input: v1::ExecInput) -> Result<ProcessInput, FieldError> {
    use v1::exec_input::Input;
    match input.input {
        Some(Input::Stdin(data)) => Ok(ProcessInput::Stdin(data)),
        Some(Input::Resize(size)) => Ok(ProcessInput::Resize(terminal_size(Some(&size)))),
        Some(Input::CloseStdin(_)) => Ok(ProcessInput::CloseStdin),
        Some(Input::Signal(signal)) if (1..=64).contains(&signal) => {
            Ok(ProcessInput::Signal(signal))
        }
        Some(Input::Signal(_)) => Err(invalid("signal", "not a signal number (1 to 64)")),
        Some(Input::Start(_)) => Err(invalid("start", "only the first message may be start")),
        None => Err(invalid("input", "the message is empty")),
    }
}

/// The first message of an Attach.
pub fn attach_start(input: Option<v1::AttachInput>) -> Result<(String, AttachRequest), FieldError> {
    let Some(v1::attach_input::Input::Start(start)) = input.and_then(|i| i.input) else {
        return Err(invalid("start", "the first message must be start"));
    };
    let id = container_id(&start.container_id, "container_id")?;
    Ok((id, AttachRequest { stdin: start.stdin }))
}

/// Every later message of an Attach.
pub fn attach_input(input: v1::AttachInput) -> Result<ProcessInput, FieldError> {
    use v1::attach_input::Input;
    match input.input {
        Some(Input::Stdin(data)) => Ok(ProcessInput::Stdin(data)),
        Some(Input::Resize(size)) => Ok(ProcessInput::Resize(terminal_size(Some(&size)))),
        Some(Input::CloseStdin(_)) => Ok(ProcessInput::CloseStdin),
        Some(Input::Start(_)) => Err(invalid("start", "only the first message may be start")),
        None => Err(invalid("input", "the message is empty")),
    }
}

pub fn process_output(output: ProcessOutput) -> v1::ProcessOutput {
    use v1::process_output::Output;
    let (output, dropped_bytes) = match output {
        ProcessOutput::Started(pid) => (
            Output::Started(v1::ProcessStarted {
                pid: u32::try_from(pid).unwrap_or(0),
            }),
            0,
        ),
        ProcessOutput::Output {
            stream: Stream::Stdout,
            data,
            dropped,
        } => (Output::Stdout(data), dropped),
        ProcessOutput::Output {
            stream: Stream::Stderr,
            data,
            dropped,
        } => (Output::Stderr(data), dropped),
        ProcessOutput::Exited(status) => (
            Output::Exit(v1::ProcessExited {
                exit_code: status.shell_code(),
                signal: match status {
                    ExitStatus::Signaled(signal) => signal,
                    ExitStatus::Exited(_) => 0,
                },
            }),
            0,
        ),
    };
    v1::ProcessOutput {
        output: Some(output),
        dropped_bytes,
    }
}

/// The first message of a PortForward: the port.
pub fn port_forward_start(input: Option<v1::PortForwardInput>) -> Result<u16, FieldError> {
    let Some(v1::port_forward_input::Input::Start(start)) = input.and_then(|i| i.input) else {
        return Err(invalid("start", "the first message must be start"));
    };
    match u16::try_from(start.port) {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(invalid("port", format!("{} is not 1..65535", start.port))),
    }
}

/// Every later message of a PortForward.
pub fn port_forward_input(input: v1::PortForwardInput) -> Result<ForwardInput, FieldError> {
    use v1::port_forward_input::Input;
    match input.input {
        Some(Input::Data(data)) => Ok(ForwardInput::Data(data)),
        Some(Input::CloseWrite(_)) => Ok(ForwardInput::CloseWrite),
        Some(Input::Start(_)) => Err(invalid("start", "only the first message may be start")),
        None => Err(invalid("input", "the message is empty")),
    }
}

pub fn port_forward_output(
    output: Result<ForwardOutput, PortForwardError>,
) -> Result<v1::PortForwardOutput, Status> {
    use v1::port_forward_output::Output;
    Ok(v1::PortForwardOutput {
        output: Some(match output? {
            ForwardOutput::Data(data) => Output::Data(data),
            ForwardOutput::Eof => Output::Eof(v1::Eof {}),
        }),
    })
}

impl From<PortForwardError> for Status {
    fn from(e: PortForwardError) -> Self {
        let message = error_chain(&e);
        match e {
            PortForwardError::Connect { .. } => Status::unavailable(message),
            PortForwardError::Connection { .. } => Status::aborted(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn exec_start_message(start: v1::ExecStart) -> Option<v1::ExecInput> {
        Some(v1::ExecInput {
            input: Some(v1::exec_input::Input::Start(start)),
        })
    }

    #[test]
    fn exec_signals_are_signal_numbers() {
        let signal = |n| v1::ExecInput {
            input: Some(v1::exec_input::Input::Signal(n)),
        };
        assert_eq!(exec_input(signal(15)).unwrap(), ProcessInput::Signal(15));
        for bad in [0, -9, 65] {
            let error = exec_input(signal(bad)).unwrap_err();
            assert!(error.to_string().contains("signal"), "{error}");
        }
    }

    #[test]
    fn an_exec_start_converts_with_its_terminal() {
        let (id, request) = exec_start(exec_start_message(v1::ExecStart {
            container_id: "c1".into(),
            args: vec!["sh".into()],
            tty: true,
            stdin: true,
            terminal_size: Some(v1::TerminalSize {
                width: 100,
                height: 100_000,
            }),
            ..Default::default()
        }))
        .unwrap();
        assert_eq!(id, "c1");
        assert!(request.stdin);
        assert_eq!(
            request.terminal,
            Some(TerminalSize {
                width: 100,
                height: u16::MAX
            })
        );
    }

    #[test]
    fn streams_that_do_not_start_with_start_are_refused_by_field() {
        assert_eq!(exec_start(None).unwrap_err().field, "start");
        let stdin_first = Some(v1::ExecInput {
            input: Some(v1::exec_input::Input::Stdin(b"x".to_vec())),
        });
        assert_eq!(exec_start(stdin_first).unwrap_err().field, "start");
        let no_args = exec_start_message(v1::ExecStart {
            container_id: "c1".into(),
            ..Default::default()
        });
        assert_eq!(exec_start(no_args).unwrap_err().field, "args");
        let bad_id = exec_start_message(v1::ExecStart {
            container_id: "../c".into(),
            args: vec!["sh".into()],
            ..Default::default()
        });
        assert_eq!(exec_start(bad_id).unwrap_err().field, "container_id");
        assert_eq!(attach_start(None).unwrap_err().field, "start");
        let again = v1::ExecInput {
            input: Some(v1::exec_input::Input::Start(v1::ExecStart::default())),
        };
        assert_eq!(exec_input(again).unwrap_err().field, "start");
    }

    #[test]
    fn ports_outside_1_to_65535_are_refused() {
        let start = |port| {
            Some(v1::PortForwardInput {
                input: Some(v1::port_forward_input::Input::Start(v1::PortForwardStart {
                    port,
                })),
            })
        };
        assert_eq!(port_forward_start(start(8080)).unwrap(), 8080);
        for port in [0, 65536, u32::MAX] {
            assert_eq!(port_forward_start(start(port)).unwrap_err().field, "port");
        }
    }

    #[test]
    fn exits_carry_the_shell_code_and_the_signal() {
        let message = process_output(ProcessOutput::Exited(ExitStatus::Signaled(9)));
        assert_eq!(
            message.output,
            Some(v1::process_output::Output::Exit(v1::ProcessExited {
                exit_code: 137,
                signal: 9
            }))
        );
    }

    #[test]
    fn a_refused_connection_is_unavailable() {
        let e = PortForwardError::Connect {
            port: 1,
            source: std::io::Error::from_raw_os_error(libc::ECONNREFUSED),
        };
        let status = Status::from(e);
        assert_eq!(status.code(), Code::Unavailable);
        assert!(status.message().contains("port 1"), "{}", status.message());
    }
}
