//! The apps file: one `[[app]]` table per app a fleet serves, read and
//! checked whole, every mistake reported at once with where it is. An entry
//! is the app's identity and key, and any of the [`AppSettings`] by their
//! names, over the command line's; anything else is an unknown key.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::settings::AppSettings;
use crate::tencent::usersig::SecretKey;

/// Why an apps file cannot be used; each line says one mistake.
#[derive(Debug, thiserror::Error)]
pub enum AppsFileError {
    #[error("cannot read the apps file {path}: {source}")]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the apps file {path} is not valid: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("the apps file {path} has {} mistake(s):\n{}", mistakes.len(), mistakes.join("\n"))]
    Mistakes {
        path: PathBuf,
        mistakes: Vec<String>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AppsFile {
    #[serde(default)]
    app: Vec<AppEntry>,
}

/// One app, as the file gives it. Settings left out take the value of the
/// command line (or its environment variable, or its default).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AppEntry {
    pub sdkappid: u64,
    pub identifier: String,
    pub secret_key_file: PathBuf,
    /// The entry's other keys: settings, by their names.
    #[serde(flatten)]
    pub settings: toml::Table,
}

impl AppEntry {
    /// The prefix this app's queues are named with in a fleet whose prefix is
    /// `fleet_prefix`: `{fleet_prefix}.{sdkappid}`, so its jobs are on
    /// `{fleet_prefix}.{sdkappid}.jobs`.
    pub fn queue_prefix(&self, fleet_prefix: &str) -> String {
        format!("{fleet_prefix}.{}", self.sdkappid)
    }

    /// The app's secret key, read from its file.
    pub fn secret_key(&self) -> Result<SecretKey, String> {
        let text = std::fs::read_to_string(&self.secret_key_file).map_err(|e| {
            format!(
                "cannot read secret_key_file {}: {e}",
                self.secret_key_file.display()
            )
        })?;
        let key = text.trim();
        if key.is_empty() {
            return Err(format!(
                "secret_key_file {} is empty",
                self.secret_key_file.display()
            ));
        }
        Ok(SecretKey::new(key))
    }

    /// The app's settings: `base`'s (the command line's), with the entry's
    /// over them.
    pub fn settings_over(&self, base: &AppSettings) -> Result<AppSettings, String> {
        base.over(&self.settings)
    }

    /// The mistakes in this entry's own values (not the ones it shares
    /// with the others, such as a duplicate SDKAppID), its settings checked
    /// over the defaults.
    fn mistakes(&self) -> Vec<String> {
        let mut mistakes = Vec::new();
        if self.sdkappid == 0 {
            mistakes.push("sdkappid must be a positive number".into());
        }
        if self.identifier.trim().is_empty() {
            mistakes.push("identifier must not be empty".into());
        }
        if let Err(e) = self.secret_key() {
            mistakes.push(e);
        }
        match self.settings_over(&AppSettings::default()) {
            Ok(settings) => mistakes.extend(settings.mistakes()),
            Err(e) => mistakes.push(e),
        }
        mistakes
    }
}

/// Reads and checks an apps file: TOML, one `[[app]]` table per app, no
/// unknown key, no SDKAppID twice, every key file readable, every value in
/// range. Every mistake is reported, each with its app.
pub fn read_apps_file(path: &Path) -> Result<Vec<AppEntry>, AppsFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| AppsFileError::Unreadable {
        path: path.to_path_buf(),
        source,
    })?;
    let beside = path.parent().unwrap_or(Path::new("."));
    parse_apps(&text, beside).map_err(|e| match e {
        Parse::Invalid(message) => AppsFileError::Invalid {
            path: path.to_path_buf(),
            message,
        },
        Parse::Mistakes(mistakes) => AppsFileError::Mistakes {
            path: path.to_path_buf(),
            mistakes,
        },
    })
}

enum Parse {
    Invalid(String),
    Mistakes(Vec<String>),
}

/// `beside` is the apps file's directory: a relative `secret_key_file` is
/// read from there, wherever the process runs.
fn parse_apps(text: &str, beside: &Path) -> Result<Vec<AppEntry>, Parse> {
    let mut file: AppsFile = toml::from_str(text).map_err(|e| Parse::Invalid(e.to_string()))?;
    for entry in &mut file.app {
        if entry.secret_key_file.is_relative() {
            entry.secret_key_file = beside.join(&entry.secret_key_file);
        }
    }
    if file.app.is_empty() {
        return Err(Parse::Invalid(
            "it names no app: add one [[app]] table per app".into(),
        ));
    }
    let mut mistakes = Vec::new();
    let mut seen = HashSet::new();
    for (i, entry) in file.app.iter().enumerate() {
        let at = format!("[[app]] #{} (sdkappid {})", i + 1, entry.sdkappid);
        if !seen.insert(entry.sdkappid) {
            mistakes.push(format!("{at}: sdkappid {} is given twice", entry.sdkappid));
        }
        mistakes.extend(entry.mistakes().into_iter().map(|m| format!("{at}: {m}")));
    }
    if mistakes.is_empty() {
        Ok(file.app)
    } else {
        Err(Parse::Mistakes(mistakes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{AppFaultPolicy, CustomMerge};

    fn key_file(name: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("bw-apps-{}-{name}", std::process::id()));
        std::fs::write(&path, "k3y\n").unwrap();
        path
    }

    fn app(sdkappid: u64, key: &Path, extra: &str) -> String {
        format!(
            "[[app]]\nsdkappid = {sdkappid}\nidentifier = \"admin\"\nsecret_key_file = {:?}\n{extra}\n",
            key.display().to_string()
        )
    }

    fn mistakes(text: &str) -> Vec<String> {
        match parse_apps(text, Path::new("/")) {
            Err(Parse::Mistakes(m)) => m,
            Err(Parse::Invalid(m)) => vec![format!("invalid: {m}")],
            Ok(apps) => panic!("accepted: {apps:?}"),
        }
    }

    #[test]
    fn a_good_file_gives_every_app_with_its_settings() {
        let key = key_file("good");
        let text = app(
            1400000001,
            &key,
            "rate = 5\nbase_url = \"https://adminapisgp.im.qcloud.com\"",
        ) + &app(
            1400000002,
            &key,
            "custom_merge = \"envelope\"\non_app_fault = \"dead-letter\"\nmax_batch_bytes = 6000",
        );
        let apps = parse_apps(&text, Path::new("/")).ok().unwrap();
        assert_eq!(apps.len(), 2);
        let base = AppSettings::default();
        let (one, two) = (
            apps[0].settings_over(&base).unwrap(),
            apps[1].settings_over(&base).unwrap(),
        );
        assert_eq!(one.rate, 5.0);
        assert_eq!(two.custom_merge, CustomMerge::Envelope);
        assert_eq!(two.on_app_fault, AppFaultPolicy::DeadLetter);
        assert_eq!(two.max_batch_bytes, 6000);
        assert!(!format!("{:?}", apps[0].secret_key().unwrap()).contains("k3y"));
    }

    #[test]
    fn a_relative_key_file_is_read_beside_the_apps_file() {
        let key = key_file("relative");
        let name = key.file_name().unwrap().to_str().unwrap().to_string();
        let text =
            format!("[[app]]\nsdkappid = 1\nidentifier = \"admin\"\nsecret_key_file = {name:?}\n");
        let apps = parse_apps(&text, &std::env::temp_dir()).ok().unwrap();
        assert_eq!(apps[0].secret_key_file, key);
        assert!(mistakes_in(&text, Path::new("/nowhere"))[0]
            .contains("cannot read secret_key_file /nowhere/"));
    }

    fn mistakes_in(text: &str, beside: &Path) -> Vec<String> {
        match parse_apps(text, beside) {
            Err(Parse::Mistakes(m)) => m,
            _ => panic!("accepted"),
        }
    }

    #[test]
    fn every_mistake_is_reported_with_its_app() {
        let key = key_file("bad");
        let missing = std::env::temp_dir().join("bw-apps-no-such-key");
        let text = app(1400000001, &key, "rate = 0")
            + &app(1400000001, &key, "")
            + &app(1400000003, &missing, "max_batch_bytes = 20000");
        let found = mistakes(&text);
        assert_eq!(found.len(), 4, "{found:#?}");
        assert!(
            found[0].contains("#1 (sdkappid 1400000001): rate 0 is out of range"),
            "{found:#?}"
        );
        assert!(found[1].contains("#2 (sdkappid 1400000001): sdkappid 1400000001 is given twice"));
        assert!(found[2].contains("#3") && found[2].contains("cannot read secret_key_file"));
        assert!(found[3].contains("max_batch_bytes 20000 is out of range"));
    }

    #[test]
    fn an_unknown_key_or_an_empty_file_is_refused_by_name() {
        let key = key_file("unknown");
        let found = mistakes(&app(1400000001, &key, "rates = 5"));
        assert!(found[0].contains("unknown field `rates`"), "{found:#?}");
        let found = mistakes("");
        assert!(found[0].contains("names no app"), "{found:#?}");
        let found = mistakes(&app(1400000001, &key, "custom_merge = \"sometimes\""));
        assert!(found[0].contains("sometimes"), "{found:#?}");
    }
}
