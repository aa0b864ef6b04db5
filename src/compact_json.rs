//! The compact text of a JSON body a store handed back expanded: what a move
//! measures and sends, so that a body accepted at its size still fits.
//!
//! PGMQ returns a body as jsonb's own text: a space after every `:` and `,`,
//! and every number written out in full (`1e1000` as 1,001 digits, `1e-7` as
//! `0.0000001`). Removing the whitespace outside strings and writing such a
//! number in exponent form again gives the same JSON value as serde_json
//! reads it: an integer serde_json reads as an integer (it fits `i64` or
//! `u64`) is never rewritten, since a typed consumer would then see a float;
//! any other number keeps its exact decimal value and stays a float. The
//! result is never longer than the text jsonb was given, except where jsonb
//! itself turned a float written with an exponent into an integer
//! (`1e16` → `10000000000000000`).

/// `text` (valid JSON) without insignificant whitespace and with floats in
/// their shorter form. Strings are copied byte for byte.
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

/// Writes a JSON number: an integer serde_json reads as one unchanged; any
/// other number in exponent form when that is shorter (`1000…0` → `1e1000`,
/// `0.0000001` → `1e-7`). Text that is no JSON number is copied as it is.
fn push_number(number: &str, out: &mut String) {
    match shorter_float(number) {
        Some(shorter) if shorter.len() < number.len() => out.push_str(&shorter),
        _ => out.push_str(number),
    }
}

/// `number` as `{digits}e{exponent}` with the same decimal value, or `None`
/// where it must stay as written (an integer in `i64`/`u64` range, or no
/// valid JSON number).
fn shorter_float(number: &str) -> Option<String> {
    let (sign, unsigned) = match number.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", number),
    };
    let (mantissa, exponent) = match unsigned.split_once(['e', 'E']) {
        Some((mantissa, exponent)) => (mantissa, Some(exponent)),
        None => (unsigned, None),
    };
    let (whole, fraction) = match mantissa.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (mantissa, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || !fraction.is_none_or(digits) {
        return None;
    }
    let written_exponent: i64 = match exponent {
        None => 0,
        Some(e) => {
            let unsigned = e.strip_prefix(['+', '-']).unwrap_or(e);
            if !digits(unsigned) {
                return None;
            }
            // Beyond i64 the value is 0 or infinite to serde_json anyway.
            e.strip_prefix('+').unwrap_or(e).parse().ok()?
        }
    };
    if fraction.is_none() && exponent.is_none() && reads_as_integer(sign, whole) {
        return None;
    }
    // value = significant × 10^scale
    let fraction = fraction.unwrap_or("");
    let all = format!("{whole}{fraction}");
    let significant = all.trim_start_matches('0');
    let trimmed = significant.trim_end_matches('0');
    if trimmed.is_empty() {
        return Some(format!("{sign}0.0"));
    }
    let fraction_len = i64::try_from(fraction.len()).ok()?;
    let trailing = i64::try_from(significant.len() - trimmed.len()).ok()?;
    let scale = written_exponent
        .checked_sub(fraction_len)?
        .checked_add(trailing)?;
    Some(if scale == 0 {
        format!("{sign}{trimmed}.0")
    } else {
        format!("{sign}{trimmed}e{scale}")
    })
}

/// Whether serde_json reads this integer as an integer (`i64` when
/// negative, `u64` otherwise) rather than as a float.
fn reads_as_integer(sign: &str, whole: &str) -> bool {
    let magnitude = whole.trim_start_matches('0');
    match magnitude.parse::<u128>() {
        Ok(m) if sign.is_empty() => m <= u128::from(u64::MAX),
        Ok(m) => m <= 1u128 << 63,
        Err(_) => magnitude.is_empty(),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::Value;

    use super::compact;

    fn value(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    /// A number written out in full, as jsonb prints it.
    fn expanded(number: &str) -> String {
        let f: f64 = number.parse().unwrap();
        let (sign, f) = if f < 0.0 { ("-", -f) } else { ("", f) };
        if f == 0.0 {
            return format!("{sign}0.0");
        }
        let exact = format!("{f:e}"); // d.ddddde±x, shortest round trip
        let (mantissa, exponent) = exact.split_once('e').unwrap();
        let exponent: i64 = exponent.parse().unwrap();
        let digits = mantissa.replace('.', "");
        let point = 1 + exponent; // digits before the decimal point
        if point <= 0 {
            format!(
                "{sign}0.{}{digits}",
                "0".repeat(point.unsigned_abs() as usize)
            )
        } else if point as usize >= digits.len() {
            format!(
                "{sign}{digits}{}.0",
                "0".repeat(point as usize - digits.len())
            )
        } else {
            let (a, b) = digits.split_at(point as usize);
            format!("{sign}{a}.{b}")
        }
    }

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
    fn long_floats_become_exponents_again() {
        let big = format!("1{}", "0".repeat(1000));
        assert_eq!(compact(&format!("[{big}, -{big}]")), "[1e1000,-1e1000]");
        let small = format!("0.{}1", "0".repeat(999));
        assert_eq!(compact(&small), "1e-1000");
        assert_eq!(compact("0.0000001"), "1e-7");
        assert_eq!(compact("0.00000012345"), "12345e-11");
        assert_eq!(compact(&format!("0.{}", "0".repeat(1000))), "0.0");
        assert_eq!(compact("[100, 1.50, 0.001, 2e5]"), "[100,1.50,1e-3,2e5]");
    }

    #[test]
    fn integers_serde_reads_as_integers_stay_integers() {
        for n in [
            "100000000",
            "1200000000",
            "1700000000000",
            "18446744073709551615",
        ] {
            assert_eq!(compact(n), n);
        }
        assert_eq!(compact("-9223372036854775808"), "-9223372036854775808");
        assert_eq!(compact("18446744073709551616000"), "18446744073709551616e3");
        assert_eq!(value(&compact("[1200000000]")), value("[1200000000]"));
    }

    #[test]
    fn text_that_is_no_number_is_copied() {
        for odd in [
            "-",
            "1e",
            "1.",
            ".5",
            "1e+",
            "--1",
            "1e99999999999999999999",
        ] {
            assert_eq!(compact(odd), odd);
        }
    }

    proptest! {
        /// A float printed by serde_json and expanded as jsonb prints it comes
        /// back as the same value, no longer than serde_json wrote it.
        #[test]
        fn expanded_floats_keep_value_and_size(bits in any::<u64>()) {
            let f = f64::from_bits(bits);
            prop_assume!(f.is_finite());
            let written = serde_json::to_string(&f).unwrap();
            let back = compact(&expanded(&written));
            prop_assert_eq!(value(&back), value(&written));
            prop_assert!(back.len() <= written.len().max(3), "{} -> {}", written, back);
        }

        /// Integers are never rewritten.
        #[test]
        fn integers_are_kept(n in any::<i64>(), m in any::<u64>()) {
            prop_assert_eq!(compact(&n.to_string()), n.to_string());
            prop_assert_eq!(compact(&m.to_string()), m.to_string());
        }

        /// Any text: no panic, and valid JSON keeps its value.
        #[test]
        fn any_text_is_safe(text in "[-+0-9eE. \\[\\]{},:\"a-z\\\\]{0,40}") {
            let back = compact(&text);
            if let Ok(before) = serde_json::from_str::<Value>(&text) {
                prop_assert_eq!(serde_json::from_str::<Value>(&back).ok(), Some(before));
            }
        }
    }
}
