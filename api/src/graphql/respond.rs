//! The JSON the server sends: a GraphQL response written straight to bytes, with room for an
//! answer that was written as JSON already.
//!
//! A budget is the bulk of the answer to a portal's superBudget query. Built as async-graphql
//! `Value`s it cost an ordered map (a SipHash and an allocation for every field), then a second
//! walk to serialise it and a third to free it: about a fifth of the hub's instructions for a
//! budget served from snapshots. The budget walk (`budget_answer`) writes its JSON directly
//! instead and hands it over as `Value::Binary`, which nothing else in this schema produces
//! (it has no binary scalar); [`write_response`] places those bytes as they are. Everything else
//! is written exactly as serde_json writes async-graphql's `Response`.

use async_graphql::{Response, Value};

/// The bytes a JSON string must escape: `"`, `\` and the control characters.
const NEEDS_ESCAPE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// Writes `text` as a JSON string, escaped exactly as serde_json escapes it (`"`, `\`, and
/// control characters; nothing else).
pub fn json_str(out: &mut Vec<u8>, text: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = text.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if !NEEDS_ESCAPE[usize::from(b)] {
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            _ => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]),
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Writes a GraphQL name (a field's or an alias) as a JSON string: a name is letters, digits
/// and underscores only, so nothing in it needs escaping.
pub fn json_name(out: &mut Vec<u8>, name: &str) {
    out.push(b'"');
    out.extend_from_slice(name.as_bytes());
    out.push(b'"');
}

/// Writes `value` as JSON; a `Value::Binary` is JSON written before, placed as it is.
pub fn write_value(out: &mut Vec<u8>, value: &Value) -> serde_json::Result<()> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Boolean(true) => out.extend_from_slice(b"true"),
        Value::Boolean(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => serde_json::to_writer(&mut *out, n)?,
        Value::String(s) => json_str(out, s),
        Value::Enum(name) => json_str(out, name),
        Value::Binary(json) => out.extend_from_slice(json),
        Value::List(items) => write_list(out, items, write_value)?,
        Value::Object(fields) => {
            out.push(b'{');
            for (i, (key, item)) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                json_str(out, key);
                out.push(b':');
                write_value(out, item)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

/// Writes one response as serde_json writes async-graphql's `Response` (`data`, then
/// `extensions` and `errors` where there are any).
pub fn write_response(out: &mut Vec<u8>, response: &Response) -> serde_json::Result<()> {
    out.extend_from_slice(b"{\"data\":");
    write_value(out, &response.data)?;
    if !response.extensions.is_empty() {
        out.extend_from_slice(b",\"extensions\":");
        serde_json::to_writer(&mut *out, &response.extensions)?;
    }
    if !response.errors.is_empty() {
        out.extend_from_slice(b",\"errors\":");
        serde_json::to_writer(&mut *out, &response.errors)?;
    }
    out.push(b'}');
    Ok(())
}

/// Writes a batch's responses as a JSON list.
pub fn write_batch(out: &mut Vec<u8>, responses: &[Response]) -> serde_json::Result<()> {
    write_list(out, responses, write_response)
}

/// Writes `items` as a JSON list, each by `write`.
fn write_list<T>(
    out: &mut Vec<u8>,
    items: &[T],
    write: fn(&mut Vec<u8>, &T) -> serde_json::Result<()>,
) -> serde_json::Result<()> {
    out.push(b'[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write(out, item)?;
    }
    out.push(b']');
    Ok(())
}

#[cfg(test)]
mod tests {
    use async_graphql::{Name, ServerError};
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn strings_are_escaped_as_serde_json_escapes_them(text in any::<String>()) {
            let mut out = Vec::new();
            json_str(&mut out, &text);
            prop_assert_eq!(out, serde_json::to_vec(&text).unwrap());
        }
    }

    #[test]
    fn every_control_character_and_quote_is_escaped_as_serde_json_does() {
        let text: String = (0u8..0x80).map(char::from).collect::<String>() + "é£\u{2028}";
        let mut out = Vec::new();
        json_str(&mut out, &text);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            serde_json::to_string(&text).unwrap()
        );
    }

    fn response() -> Response {
        let mut fields = async_graphql::indexmap::IndexMap::new();
        fields.insert(Name::new("z"), Value::from(1.5));
        fields.insert(
            Name::new("a\"b"),
            Value::List(vec![Value::Null, true.into()]),
        );
        fields.insert(Name::new("e"), Value::Enum(Name::new("FRESH")));
        fields.insert(Name::new("n"), Value::from(-7));
        fields.insert(Name::new("s"), Value::from("line\nbreak"));
        fields.insert(Name::new("o"), Value::Object(Default::default()));
        Response::new(Value::Object(fields))
    }

    #[test]
    fn a_response_is_written_as_serde_json_writes_it() {
        let plain = response();
        let mut with_errors = response();
        with_errors
            .errors
            .push(ServerError::new("no such person", None));
        let with_extensions = response().extension("took", Value::from(3));
        for r in [plain, with_errors, with_extensions] {
            let mut out = Vec::new();
            write_response(&mut out, &r).unwrap();
            assert_eq!(
                String::from_utf8(out).unwrap(),
                serde_json::to_string(&r).unwrap()
            );
        }
        let batch = vec![
            response(),
            Response::from_errors(vec![ServerError::new("x", None)]),
        ];
        let mut out = Vec::new();
        write_batch(&mut out, &batch).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            serde_json::to_string(&batch).unwrap()
        );
    }

    #[test]
    fn json_written_before_is_placed_as_it_is() {
        let mut fields = async_graphql::indexmap::IndexMap::new();
        fields.insert(
            Name::new("superBudget"),
            Value::Binary(br#"{"gross":{"amount":"1.50"}}"#.to_vec().into()),
        );
        let mut out = Vec::new();
        write_response(&mut out, &Response::new(Value::Object(fields))).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"data":{"superBudget":{"gross":{"amount":"1.50"}}}}"#
        );
    }
}
