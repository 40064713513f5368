//! Kubernetes resource quantities (`128Mi`, `1Gi`, `500m`, `2`, `1e9`), as exact integers.

/// A quantity times 10^`extra_dec`, rounding fractions up as Kubernetes does: plain numbers
/// (`1024`, `1.5`), binary suffixes `Ki Mi Gi Ti Pi Ei`, decimal suffixes `k M G T P E` (`K` is accepted for
/// `k`) and `m` (milli), and decimal exponents (`1e9`, `5E3`). Negative quantities are rejected.
fn scaled(s: &str, extra_dec: i32) -> Result<u64, String> {
    let bad = |why: &str| format!("invalid quantity {s:?}: {why}");
    let t = s.trim();
    let t = t.strip_prefix('+').unwrap_or(t);
    if t.starts_with('-') {
        return Err(bad("must not be negative"));
    }
    let num_end = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, suffix) = t.split_at(num_end);
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if int.is_empty() && frac.is_empty() {
        return Err(bad("no number"));
    }
    if frac.contains('.') || frac.len() > 30 {
        return Err(bad("malformed number"));
    }
    // value = mantissa / 10^frac_digits * 2^bin * 10^dec
    // Digit by digit: the scheduler parses every node's allocatable for each VMI, and a string per parse showed.
    let mut mantissa: u128 = 0;
    for d in int.bytes().chain(frac.bytes()) {
        mantissa = mantissa
            .checked_mul(10)
            .and_then(|m| m.checked_add(u128::from(d - b'0')))
            .ok_or_else(|| bad("number too large"))?;
    }
    let (bin, dec): (u32, i32) = match suffix {
        "" => (0, 0),
        "Ki" => (10, 0),
        "Mi" => (20, 0),
        "Gi" => (30, 0),
        "Ti" => (40, 0),
        "Pi" => (50, 0),
        "Ei" => (60, 0),
        "m" => (0, -3),
        "k" | "K" => (0, 3),
        "M" => (0, 6),
        "G" => (0, 9),
        "T" => (0, 12),
        "P" => (0, 15),
        "E" => (0, 18),
        exp if exp.starts_with(['e', 'E']) => {
            let e: i32 = exp[1..].parse().map_err(|_| bad("unknown suffix"))?;
            if !(-40..=40).contains(&e) {
                return Err(bad("exponent out of range"));
            }
            (0, e)
        }
        _ => return Err(bad("unknown suffix (use Ki, Mi, Gi, Ti, k, M, G, T or an exponent like 1e9)")),
    };
    let too_large = || bad("larger than 2^64-1 bytes");
    let mut value = mantissa.checked_mul(1u128 << bin).ok_or_else(too_large)?;
    let mut divisor_exp = frac.len() as i32 - dec - extra_dec;
    while divisor_exp < 0 {
        value = value.checked_mul(10).ok_or_else(too_large)?;
        divisor_exp += 1;
    }
    let divisor = 10u128.checked_pow(divisor_exp as u32).ok_or_else(too_large)?;
    u64::try_from(value.div_ceil(divisor)).map_err(|_| too_large())
}

/// Parses a quantity into whole base units (bytes, cores), rounding fractions up.
pub fn parse(q: &str) -> Result<u64, String> {
    scaled(q, 0)
}

/// Parses a quantity into thousandths (so `500m` CPU is 500).
pub fn milli(q: &str) -> Result<u64, String> {
    scaled(q, 3)
}

/// A quantity from JSON (string or number).
pub fn from_value(v: &serde_json::Value) -> Result<u64, String> {
    match v {
        serde_json::Value::String(s) => parse(s),
        serde_json::Value::Number(n) => parse(&n.to_string()),
        other => Err(format!("invalid quantity {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse("128Mi").unwrap(), 128 << 20);
        assert_eq!(parse("1Gi").unwrap(), 1 << 30);
        assert_eq!(parse("1G").unwrap(), 1_000_000_000);
        assert_eq!(parse("1e3").unwrap(), 1000);
        assert_eq!(milli("500m").unwrap(), 500);
        assert_eq!(milli("2").unwrap(), 2000);
        assert_eq!(parse("1.5Gi").unwrap(), 3 << 29);
        assert_eq!(parse("2").unwrap(), 2);
        assert_eq!(from_value(&serde_json::json!(64)).unwrap(), 64);
        assert!(parse("12Qi").is_err());
        assert!(parse("abc").is_err());
        assert!(parse("-1").is_err());
    }

    #[test]
    fn quantities() {
        let cases = [
            ("0", 0),
            ("1024", 1024),
            ("1Ki", 1024),
            ("64Mi", 64 << 20),
            ("1Gi", 1 << 30),
            ("1.5Gi", 3 << 29),
            ("2Ti", 2 << 40),
            ("1Ei", 1 << 60),
            ("1k", 1000),
            ("1K", 1000),
            ("10M", 10_000_000),
            ("1G", 1_000_000_000),
            ("2T", 2_000_000_000_000),
            ("1e9", 1_000_000_000),
            ("5E3", 5000),
            ("1.5e3", 1500),
            ("1e-3", 1),
            ("1500m", 2),
            ("1000m", 1),
            ("0.5", 1),
            (".5Ki", 512),
            ("+3", 3),
            (" 7Mi ", 7 << 20),
            ("18446744073709551615", u64::MAX),
        ];
        for (q, want) in cases {
            assert_eq!(parse(q).unwrap_or_else(|e| panic!("{e}")), want, "{q}");
        }
    }

    #[test]
    fn bad_quantities() {
        for q in
            ["", "Gi", "-1Gi", "1GB", "1gi", "1..2", "1.2.3", "1e", "1e999", "16Ei", "18446744073709551616", "1 Gi"]
        {
            assert!(parse(q).is_err(), "{q:?} should be rejected");
        }
    }
}
