//! The JSON array form of WAMP messages: `[16, 239714735, {}, "com.myapp.topic", ["Hello"]]`.
//!
//! [`decode`] checks the message's shape (field types, id ranges, trailing payload) and the
//! options and details whose types the spec fixes (PUBLISH and SUBSCRIBE options, EVENT
//! details); [`encode`] writes compact JSON with dict order kept, so a decoded message encodes
//! back to the bytes it came from when those were compact. Binary values travel as a string of
//! `\u0000` followed by base64, the WAMP convention. Both are [`Serializer::Json`].

use super::serializer::{DecodeError, Serializer};
use super::WampMessage;

/// Decodes one message from its JSON array form.
pub fn decode(text: &str) -> Result<WampMessage, DecodeError> {
    Serializer::Json.decode(text.as_bytes())
}

/// Encodes a message as compact JSON, dict order kept.
pub fn encode(message: &WampMessage) -> String {
    let bytes = Serializer::Json.encode(message);
    // serde_json writes UTF-8 only.
    String::from_utf8(bytes).unwrap_or_else(|e| unreachable!("serde_json wrote {e}"))
}

#[cfg(test)]
mod tests {
    use serde_json::Value as Json;

    use super::*;
    use crate::wamp::serializer::tests::vector_files;
    use crate::wamp::{samples, Dict, Payload, Value};

    /// EVENT_RECEIVED (337) is provisional and not modelled: its vector is skipped.
    const SKIPPED: &[&str] = &["EVENT_RECEIVED"];

    /// Every JSON variant of every serialization sample decodes, all variants of a sample give
    /// the same message, and it encodes back to one of the variants byte for byte. Every
    /// validation-rule sample decodes unless it carries an `expected_error`, in which case the
    /// error names what the vector says it must.
    #[test]
    fn every_test_vector_decodes_and_reencodes_byte_for_byte() {
        let (mut variants, mut rules, mut refused, mut skipped) = (0, 0, 0, Vec::new());
        for path in vector_files() {
            let file: Json =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            let kind = file["wamp_message_type"].as_str().unwrap().to_owned();
            if SKIPPED.contains(&kind.as_str()) {
                skipped.push(kind);
                continue;
            }
            for sample in file["samples"].as_array().unwrap() {
                let place = format!("{} / {}", path.display(), sample["description"]);
                if let Some(json) = sample["serializers"]["json"].as_array() {
                    let texts: Vec<String> = json
                        .iter()
                        .map(|v| {
                            let hex = v["bytes_hex"].as_str().unwrap();
                            let bytes: Vec<u8> = (0..hex.len())
                                .step_by(2)
                                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                                .collect();
                            String::from_utf8(bytes).unwrap()
                        })
                        .collect();
                    let first = decode(&texts[0]).unwrap_or_else(|e| panic!("{place}: {e}"));
                    assert_eq!(first.name(), kind, "{place}");
                    assert_eq!(
                        first.code(),
                        sample["expected_attributes"]["message_type"]
                            .as_u64()
                            .unwrap()
                    );
                    for text in &texts {
                        assert_eq!(decode(text).unwrap(), first, "{place}: {text}");
                        variants += 1;
                    }
                    let encoded = encode(&first);
                    assert!(
                        texts.contains(&encoded),
                        "{place}: {encoded} is none of {texts:?}"
                    );
                } else {
                    let text = sample["wmsg"].to_string();
                    rules += 1;
                    match (decode(&text), sample.get("expected_error")) {
                        (Ok(message), None) => assert_eq!(encode(&message), text, "{place}"),
                        (Err(err), Some(expected)) => {
                            refused += 1;
                            let contains = expected["contains"].as_str().unwrap();
                            assert!(err.to_string().contains(contains), "{place}: {err}");
                        }
                        (result, expected) => panic!("{place}: {result:?}, expected {expected:?}"),
                    }
                }
            }
        }
        assert_eq!(skipped, SKIPPED);
        assert_eq!(
            (variants, rules, refused),
            (57, 67, 28),
            "every vector was read"
        );
    }

    #[test]
    fn every_message_type_round_trips_through_json() {
        for message in samples() {
            let text = encode(&message);
            assert_eq!(decode(&text).unwrap(), message, "{text}");
        }
    }

    #[test]
    fn binary_values_use_the_nul_base64_convention() {
        let message = WampMessage::Result {
            request: 1,
            details: Dict::new(),
            payload: Payload::Args(vec![Value::Bytes(vec![0, 1, 2, 255])]),
        };
        let text = encode(&message);
        assert_eq!(text, r#"[50,1,{},["\u0000AAEC/w=="]]"#);
        assert_eq!(decode(&text).unwrap(), message);
    }

    #[test]
    fn malformed_messages_are_refused_with_the_field_named() {
        let cases = [
            ("", "not json"),
            ("{}", "array"),
            ("[]", "type code"),
            ("[999]", "unknown message type"),
            ("[48]", "Request is missing"),
            ("[48, -1, {}, \"p\"]", "Request must be an integer"),
            (
                "[48, 9007199254740993, {}, \"p\"]",
                "Request must be an integer",
            ),
            ("[48, 1, [], \"p\"]", "Options must be a dict"),
            ("[48, 1, {}, 7]", "Procedure must be a string"),
            ("[48, 1, {}, \"p\", {}]", "Arguments must be a list"),
            ("[48, 1, {}, \"p\", [], []]", "ArgumentsKw must be a dict"),
            ("[48, 1, {}, \"p\", [], {}, 1]", "more elements"),
            ("[50, 1, {}, [\"\\u0000!!\"]]", "bad base64"),
        ];
        for (text, expected) in cases {
            let err = decode(text).unwrap_err().to_string();
            assert!(err.contains(expected), "{text}: {err}");
        }
    }
}
