//! A panic, wherever it happens, is one log line through tracing: in the configured format
//! (JSON included), with its message, location and thread, and without a backtrace even
//! when `RUST_BACKTRACE` is set. The default hook writes straight to stderr, bypassing the
//! log format, and with `RUST_BACKTRACE=1` tens of kilobytes per panic; a client that can
//! make a handler panic could then fill the disk.
//!
//! A panic in a connection's task still ends that task (the listener answers a panic in a
//! route with a JSON 500 first); this only changes how it is reported.

use std::panic::PanicHookInfo;

/// Replaces the panic hook. Call once, after the tracing subscriber is installed.
pub fn install() {
    std::panic::set_hook(Box::new(log_panic));
}

fn log_panic(info: &PanicHookInfo<'_>) {
    let payload = info.payload();
    let message = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(a panic without a message)");
    let location = info
        .location()
        .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
        .unwrap_or_default();
    let thread = std::thread::current();
    tracing::error!(
        target: "tether::panic",
        location = %location,
        thread = thread.name().unwrap_or("unnamed"),
        "panic: {message}"
    );
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_panic_is_one_json_line_with_its_location() {
        let out = Capture::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer(move || writer.clone())
            .finish();
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(super::log_panic));
        let line = line!() + 2;
        let caught = tracing::subscriber::with_default(subscriber, || {
            std::panic::catch_unwind(|| panic!("boom {}", 42))
        });
        std::panic::set_hook(previous);
        assert!(caught.is_err());

        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(v["level"], "ERROR", "{v}");
        assert_eq!(v["fields"]["message"], "panic: boom 42", "{v}");
        let location = v["fields"]["location"].as_str().unwrap();
        assert!(
            location.contains(&format!("panics.rs:{line}:")),
            "{location}"
        );
        assert!(!text.contains("stack backtrace"), "{text}");
    }
}
