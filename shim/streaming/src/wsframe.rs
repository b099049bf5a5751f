//! The channel framing Kubernetes puts on WebSocket messages: a channel byte, then the
//! payload; in the base64 subprotocols a text message with the channel as an ASCII digit and
//! the payload base64-encoded.

use base64::Engine;
use bytes::Bytes;
use tokio_tungstenite::tungstenite::Message;

/// How a subprotocol encodes messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WsEncoding {
    Binary,
    Base64,
}

/// A message as the protocols see it.
pub(crate) enum Inbound {
    Data(u8, Bytes),
    Close,
}

/// One outgoing message on `channel`.
pub(crate) fn encode_message(channel: u8, payload: &[u8], encoding: WsEncoding) -> Message {
    match encoding {
        WsEncoding::Binary => {
            let mut frame = Vec::with_capacity(payload.len() + 1);
            frame.push(channel);
            frame.extend_from_slice(payload);
            Message::Binary(frame.into())
        }
        WsEncoding::Base64 => {
            let mut text = String::with_capacity(payload.len() * 4 / 3 + 5);
            text.push(char::from(b'0'.wrapping_add(channel)));
            base64::engine::general_purpose::STANDARD.encode_string(payload, &mut text);
            Message::Text(text.into())
        }
    }
}

/// Reads one incoming message; `None` for pings, pongs, empty or undecodable messages.
pub(crate) fn decode_message(message: Message, encoding: WsEncoding) -> Option<Inbound> {
    match (message, encoding) {
        (Message::Close(_), _) => Some(Inbound::Close),
        (Message::Binary(mut data), WsEncoding::Binary) => {
            if data.is_empty() {
                return None;
            }
            let channel = data[0];
            let payload = data.split_off(1);
            Some(Inbound::Data(channel, payload))
        }
        (Message::Text(text), WsEncoding::Base64) => {
            let bytes = text.as_bytes();
            let (&first, rest) = bytes.split_first()?;
            let channel = first.wrapping_sub(b'0');
            let payload = base64::engine::general_purpose::STANDARD
                .decode(rest)
                .ok()?;
            Some(Inbound::Data(channel, payload.into()))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_messages_round_trip() {
        let message = encode_message(1, b"hello", WsEncoding::Base64);
        assert_eq!(message.to_text().unwrap(), "1aGVsbG8=");
        let Some(Inbound::Data(channel, payload)) = decode_message(message, WsEncoding::Base64)
        else {
            panic!("not data");
        };
        assert_eq!((channel, &payload[..]), (1, &b"hello"[..]));
    }

    #[test]
    fn empty_binary_message_is_ignored() {
        assert!(decode_message(Message::Binary(Bytes::new()), WsEncoding::Binary).is_none());
    }
}
