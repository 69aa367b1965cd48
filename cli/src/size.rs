//! Byte sizes on the command line: `4096`, `64k`, `1M`, `2MiB` (powers of 1024).

/// Parses a size with an optional `k`, `M` or `G` suffix (case-insensitive, with an optional
/// `B`, `iB`), in powers of 1024; the result must fit in a `u32`.
///
/// ```
/// use drtrace_ctl::size::parse_size;
/// assert_eq!(parse_size("4096"), Ok(4096));
/// assert_eq!(parse_size("64k"), Ok(65536));
/// assert_eq!(parse_size("1M"), Ok(1 << 20));
/// assert!(parse_size("12x").is_err());
/// ```
pub fn parse_size(text: &str) -> Result<u32, String> {
    let trimmed = text.trim();
    let digits_end = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, suffix) = trimmed.split_at(digits_end);
    let bad = || format!("'{text}' is not a size (examples: 4096, 64k, 1M)");
    let value: u64 = digits.parse().map_err(|_| bad())?;
    let shift = match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(bad()),
    };
    value
        .checked_mul(1 << shift)
        .and_then(|v| u32::try_from(v).ok())
        .ok_or_else(|| format!("size '{text}' is too large (at most 2G - 1)"))
}

/// Formats a byte count compactly (`4 KiB`, `1 MiB`, `1500 B`).
pub fn format_size(bytes: u32) -> String {
    let b = u64::from(bytes);
    for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if b >= 1 << shift && b % (1 << shift) == 0 {
            return format!("{} {unit}", b >> shift);
        }
    }
    format!("{b} B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("1m"), Ok(1 << 20));
        assert_eq!(parse_size("2MiB"), Ok(2 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert!(parse_size("4G").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("k").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("1.5M").is_err());
    }

    #[test]
    fn sizes_format_in_the_largest_exact_unit() {
        assert_eq!(format_size(4096), "4 KiB");
        assert_eq!(format_size(1 << 20), "1 MiB");
        assert_eq!(format_size(1500), "1500 B");
    }
}
