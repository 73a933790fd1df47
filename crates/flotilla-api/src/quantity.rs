//! Resource quantities (`500m`, `128Mi`, `1.5`, `2e3`), compared exactly: values are held in
//! nano-units as `i128`, which covers every suffix up to `E`/`Ei` without rounding.

/// The message upstream gives for a malformed quantity.
pub const FORMAT_ERROR: &str =
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'";

/// Parses a quantity into nano-units (`1` → 1e9, `1m` → 1e6, `1Ki` → 1024e9).
pub fn parse(text: &str) -> Result<i128, String> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-')).unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let (negative, digits) = match number.as_bytes().first() {
        Some(b'-') => (true, &number[1..]),
        Some(b'+') => (false, &number[1..]),
        _ => (false, number),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    if (whole.is_empty() && fraction.is_empty())
        || !whole.chars().all(|c| c.is_ascii_digit())
        || !fraction.chars().all(|c| c.is_ascii_digit())
        || whole.len() + fraction.len() > 30
    {
        return Err(FORMAT_ERROR.into());
    }
    // The mantissa as an integer with `fraction.len()` implied decimals.
    let mantissa: i128 = format!("{whole}{fraction}").parse().map_err(|_| FORMAT_ERROR.to_string())?;
    let (multiplier, decimal_exponent): (i128, i32) = match suffix {
        "" => (1, 0),
        "n" => (1, -9),
        "u" => (1, -6),
        "m" => (1, -3),
        "k" => (1, 3),
        "M" => (1, 6),
        "G" => (1, 9),
        "T" => (1, 12),
        "P" => (1, 15),
        "E" => (1, 18),
        "Ki" => (1 << 10, 0),
        "Mi" => (1 << 20, 0),
        "Gi" => (1 << 30, 0),
        "Ti" => (1 << 40, 0),
        "Pi" => (1 << 50, 0),
        "Ei" => (1 << 60, 0),
        exponent if exponent.starts_with(['e', 'E']) => {
            let e: i32 = exponent[1..].parse().map_err(|_| FORMAT_ERROR.to_string())?;
            if !(-30..=30).contains(&e) {
                return Err(FORMAT_ERROR.into());
            }
            (1, e)
        }
        _ => return Err(FORMAT_ERROR.into()),
    };
    // nanos = mantissa * 10^(9 + exponent - decimals) * multiplier
    let shift = 9 + decimal_exponent - fraction.len() as i32;
    let scaled = mantissa.checked_mul(multiplier).ok_or_else(|| FORMAT_ERROR.to_string())?;
    // Past i128 (about 1.7e29 units) a quantity is refused rather than wrapped.
    let value = if shift >= 0 {
        10i128.checked_pow(shift as u32).and_then(|p| scaled.checked_mul(p)).ok_or_else(|| FORMAT_ERROR.to_string())?
    } else {
        // Below a nano-unit: round up, as upstream rounds quantities up to their precision. A
        // divisor past i128 is larger than any mantissa, so only the rounding is left.
        match 10i128.checked_pow(shift.unsigned_abs()) {
            Some(divisor) => scaled / divisor + i128::from(scaled % divisor != 0),
            None => i128::from(scaled != 0),
        }
    };
    Ok(if negative { -value } else { value })
}

/// A byte count as upstream writes one (`resource.NewQuantity(n, BinarySI)`): the largest
/// binary suffix that divides it exactly (`1536Mi`, `2Gi`), the plain number otherwise.
pub fn bytes(n: u64) -> String {
    if n < 1024 {
        return n.to_string();
    }
    let mut value = n;
    let mut suffixes = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"].into_iter();
    let mut suffix = suffixes.next().unwrap_or_default();
    while value.is_multiple_of(1024) {
        match suffixes.next() {
            Some(next) => (value, suffix) = (value / 1024, next),
            None => break,
        }
    }
    format!("{value}{suffix}")
}

/// Cores as upstream writes them: whole cores plainly (`2`), otherwise in millicores (`1500m`).
pub fn cores(cpu: f64) -> String {
    let millis = (cpu * 1000.0).round() as u64;
    if millis.is_multiple_of(1000) { (millis / 1000).to_string() } else { format!("{millis}m") }
}

/// CPU in nanocores as upstream writes it (`resource.NewScaledQuantity(n, -9)`, canonical): the
/// largest decimal suffix that keeps it whole (`2`, `250m`, `1500u`, `123456789n`).
pub fn nanocores(n: u64) -> String {
    match n {
        0 => "0".into(),
        n if n.is_multiple_of(1_000_000_000) => (n / 1_000_000_000).to_string(),
        n if n.is_multiple_of(1_000_000) => format!("{}m", n / 1_000_000),
        n if n.is_multiple_of(1_000) => format!("{}u", n / 1_000),
        n => format!("{n}n"),
    }
}

#[cfg(test)]
mod tests {
    use super::{bytes, cores, nanocores, parse};

    #[test]
    fn bytes_and_cores_are_written_canonically() {
        assert_eq!(bytes(0), "0");
        assert_eq!(bytes(1000), "1000");
        assert_eq!(bytes(1025), "1025");
        assert_eq!(bytes(2048), "2Ki");
        assert_eq!(bytes(1536 << 20), "1536Mi");
        assert_eq!(bytes(16_374_584 * 1024), "16374584Ki");
        assert_eq!(bytes(1 << 30), "1Gi");
        assert_eq!(nanocores(0), "0");
        assert_eq!(nanocores(2_000_000_000), "2");
        assert_eq!(nanocores(5_000_000), "5m");
        assert_eq!(nanocores(1_500_000_000), "1500m");
        assert_eq!(nanocores(1_500_000), "1500u");
        assert_eq!(nanocores(123_456_789), "123456789n");
        assert_eq!(cores(2.0), "2");
        assert_eq!(cores(1.5), "1500m");
        assert_eq!(cores(0.0), "0");
        for n in [1u64 << 20, 3 << 30, 123_456 * 1024] {
            assert_eq!(parse(&bytes(n)), Ok(i128::from(n) * 1_000_000_000));
        }
    }

    /// Found by the `quantity` fuzz target: exponents whose power of ten passes i128.
    #[test]
    fn huge_and_tiny_exponents_neither_overflow_nor_wrap() {
        assert!(parse("1e30").is_err());
        assert_eq!(parse("1e29"), Ok(10i128.pow(38)));
        assert!(parse("2e29").is_err());
        assert_eq!(parse("1e20"), Ok(100_000_000_000_000_000_000 * 1_000_000_000));
        assert_eq!(parse("1e-30"), Ok(1));
        assert_eq!(parse(".000000000000000000000000000001e-30"), Ok(1));
        assert_eq!(parse("0e-30"), Ok(0));
        assert_eq!(parse("-1e-10"), Ok(-1));
    }

    #[test]
    fn suffixes_scale_exactly() {
        assert_eq!(parse("1"), Ok(1_000_000_000));
        assert_eq!(parse("500m"), Ok(500_000_000));
        assert_eq!(parse("0.5"), Ok(500_000_000));
        assert_eq!(parse("1Ki"), Ok(1024 * 1_000_000_000));
        assert_eq!(parse("128Mi"), Ok(128 * (1 << 20) * 1_000_000_000));
        assert_eq!(parse("1e3"), Ok(1000 * 1_000_000_000));
        assert_eq!(parse("1.5G"), Ok(1_500_000_000 * 1_000_000_000));
        assert_eq!(parse("-2"), Ok(-2_000_000_000));
        assert_eq!(parse("1n"), Ok(1));
        assert_eq!(parse("8Ei"), Ok(8 * (1i128 << 60) * 1_000_000_000));
        assert_eq!(parse("1M"), parse("1000k"));
    }

    #[test]
    fn garbage_is_refused() {
        for bad in ["", "abc", "1x", "1.2.3", "--1", "1Kix", "."] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
