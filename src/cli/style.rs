//! Text styling of the command's own output: bold headings on a terminal, none when stdout is
//! not one or `NO_COLOR` is set (https://no-color.org), and sizes in human units.

use std::io::IsTerminal;
use std::sync::OnceLock;

/// Whether stdout gets ANSI styling.
pub fn color_stdout() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| no_color_unset() && std::io::stdout().is_terminal())
}

/// Whether stderr (logs, progress) gets ANSI styling.
pub fn color_stderr() -> bool {
    no_color_unset() && std::io::stderr().is_terminal()
}

fn no_color_unset() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// `text` in bold when stdout is styled.
pub fn bold(text: &str) -> String {
    if color_stdout() {
        format!("\u{1b}[1m{text}\u{1b}[0m")
    } else {
        text.to_string()
    }
}

/// `1536` -> `1.5 KiB`; below 1 KiB in bytes.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1023), "1023 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(64 << 20), "64.0 MiB");
        assert_eq!(size(3 << 30), "3.0 GiB");
    }
}
