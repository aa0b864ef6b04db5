//! The compact text of a JSON body a store handed back expanded: what a move
//! measures and sends, so that a body accepted at its size still fits.
//!
//! PGMQ returns a body as jsonb's own text: a space after every `:` and `,`,
//! and a number in full (`1e1000` as 1,001 digits). Removing the whitespace
//! outside strings and writing a long run of zeros as an exponent again
//! gives the same JSON value, never longer than the text jsonb was given
//! (jsonb also drops duplicate keys and unescapes, which only shortens).

/// A number run of zeros at least this long becomes an exponent (shorter
/// runs are left as written: `100` stays `100`).
const ZEROS_AS_EXPONENT: usize = 8;

/// `text` (valid JSON) without insignificant whitespace and with long runs
/// of zeros in numbers written as exponents. Strings are copied byte for byte.
pub(crate) fn compact(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                let start = i;
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i = (i + 1).min(bytes.len());
                out.push_str(&text[start..i]);
            }
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < bytes.len()
                    && matches!(bytes[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                push_number(&text[start..i], &mut out);
            }
            _ => {
                // ASCII punctuation or a literal (true/false/null): copy up to the
                // next structural byte, keeping UTF-8 boundaries.
                let start = i;
                i += 1;
                while i < bytes.len()
                    && !matches!(
                        bytes[i],
                        b'"' | b' ' | b'\t' | b'\n' | b'\r' | b'-' | b'0'..=b'9'
                    )
                {
                    i += 1;
                }
                out.push_str(&text[start..i]);
            }
        }
    }
    out
}

/// Writes a JSON number, as an exponent when that is shorter: an integer
/// ending in a long run of zeros (`1000…0` → `1e1000`) or a fraction
/// starting with one (`0.000…01` → `1e-1000`).
fn push_number(number: &str, out: &mut String) {
    let plain = !number.contains(['e', 'E']);
    let (sign, digits) = match number.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", number),
    };
    if plain && !digits.contains('.') {
        let kept = digits.trim_end_matches('0');
        let zeros = digits.len() - kept.len();
        if !kept.is_empty() && zeros >= ZEROS_AS_EXPONENT {
            out.push_str(&format!("{sign}{kept}e{zeros}"));
            return;
        }
    } else if let (true, Some(fraction)) = (plain, digits.strip_prefix("0.")) {
        let kept = fraction.trim_start_matches('0');
        let zeros = fraction.len() - kept.len();
        if !kept.is_empty() && zeros >= ZEROS_AS_EXPONENT {
            // 0.00ddd = ddd × 10^-(zeros + len(ddd))
            let exponent = zeros + kept.len();
            out.push_str(&format!("{sign}{kept}e-{exponent}"));
            return;
        }
    }
    out.push_str(number);
}

#[cfg(test)]
mod tests {
    use super::compact;

    #[test]
    fn whitespace_outside_strings_goes() {
        assert_eq!(
            compact(r#"{"a": [1, 2, "x, y: z"], "b": {"c": null}}"#),
            r#"{"a":[1,2,"x, y: z"],"b":{"c":null}}"#
        );
        assert_eq!(compact(r#"["q\" , :", true]"#), r#"["q\" , :",true]"#);
        assert_eq!(compact(r#"{"é": "ü ü"}"#), r#"{"é":"ü ü"}"#);
    }

    #[test]
    fn long_numbers_become_exponents_again() {
        let big = format!("1{}", "0".repeat(1000));
        assert_eq!(compact(&format!("[{big}, -{big}]")), "[1e1000,-1e1000]");
        let small = format!("0.{}1", "0".repeat(999));
        assert_eq!(compact(&small), "1e-1000");
        assert_eq!(
            compact("[100, 1.50, 0.001, 2e5, 12000000000]"),
            "[100,1.50,0.001,2e5,12e9]"
        );
        let value = |t: &str| t.parse::<f64>().unwrap();
        assert_eq!(value("12e9"), value("12000000000"));
        assert_eq!(value("25e-12"), value("0.000000000025"));
        assert_eq!(compact("0.000000000025"), "25e-12");
    }
}
