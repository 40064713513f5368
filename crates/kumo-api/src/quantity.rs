//! Kubernetes resource quantities (`128Mi`, `1Gi`, `500m`, `2`, `1e9`), as integers.

/// Parses a quantity into a whole number of base units (bytes, cores), rounding up fractions.
pub fn parse(q: &str) -> Result<u64, String> {
    milli(q).map(|m| m.div_ceil(1000))
}

/// Parses a quantity into thousandths (so `500m` CPU is 500).
pub fn milli(q: &str) -> Result<u64, String> {
    let q = q.trim();
    let split = q.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let value: f64 = num.parse().map_err(|_| format!("invalid quantity {q:?}"))?;
    let mult: f64 = match suffix {
        "" => 1.0,
        "m" => 0.001,
        "k" | "K" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0f64.powi(4),
        "Pi" => 1024.0f64.powi(5),
        s if s.starts_with(['e', 'E']) => {
            10f64.powi(s[1..].parse::<i32>().map_err(|_| format!("invalid quantity {q:?}"))?)
        }
        _ => return Err(format!("invalid quantity {q:?}: unknown suffix {suffix:?}")),
    };
    let m = value * mult * 1000.0;
    if !m.is_finite() || m < 0.0 {
        return Err(format!("invalid quantity {q:?}"));
    }
    Ok(m.round() as u64)
}

/// A quantity from JSON (string or number).
pub fn from_value(v: &serde_json::Value) -> Result<u64, String> {
    match v {
        serde_json::Value::String(s) => parse(s),
        serde_json::Value::Number(n) => {
            n.as_f64().filter(|f| *f >= 0.0).map(|f| f.ceil() as u64).ok_or_else(|| format!("invalid quantity {n}"))
        }
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
        assert_eq!(parse("1.5Gi").unwrap(), 3 << 29);
        assert_eq!(parse("2").unwrap(), 2);
        assert!(parse("12Qi").is_err());
        assert!(parse("abc").is_err());
    }
}
