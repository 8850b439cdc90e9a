//! Progress on stderr for long work (bounded reads, `grep`, benchmark loads), drawn only
//! when stderr is a terminal: pipes, files and tests see nothing, and stdout is never
//! touched. A [`Progress`] that is not drawn costs a branch per update.

use std::io::IsTerminal as _;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress bar or spinner on stderr, or nothing when stderr is not a terminal.
#[derive(Debug, Clone)]
pub struct Progress(Option<ProgressBar>);

impl Progress {
    fn shown() -> bool {
        std::io::stderr().is_terminal()
    }

    /// A bar to `len` units of `unit` (e.g. "records"), with rate and time left.
    pub fn bar(len: u64, what: &str, unit: &str) -> Progress {
        if !Self::shown() {
            return Progress(None);
        }
        let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
        let template = format!(
            "{{spinner}} {what} [{{bar:30}}] {{human_pos}}/{{human_len}} {unit} \
             ({{per_sec}}, {{eta}} left)"
        );
        if let Ok(style) = ProgressStyle::with_template(&template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.enable_steady_tick(Duration::from_millis(200));
        Progress(Some(bar))
    }

    /// A spinner with a message that the caller updates.
    pub fn spinner(message: impl Into<String>) -> Progress {
        if !Self::shown() {
            return Progress(None);
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
            bar.set_style(style);
        }
        bar.set_message(message.into());
        bar.enable_steady_tick(Duration::from_millis(200));
        Progress(Some(bar))
    }

    /// Nothing drawn.
    pub fn none() -> Progress {
        Progress(None)
    }

    /// Whether anything is drawn (so callers can skip formatting messages).
    pub fn is_shown(&self) -> bool {
        self.0.is_some()
    }

    pub fn inc(&self, n: u64) {
        if let Some(bar) = &self.0 {
            bar.inc(n);
        }
    }

    pub fn set_message(&self, message: impl Into<String>) {
        if let Some(bar) = &self.0 {
            bar.set_message(message.into());
        }
    }

    /// A line on stderr above the bar (plain `eprintln!` when nothing is drawn).
    pub fn println(&self, line: impl AsRef<str>) {
        match &self.0 {
            Some(bar) => bar.println(line.as_ref()),
            None => eprintln!("{}", line.as_ref()),
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}
