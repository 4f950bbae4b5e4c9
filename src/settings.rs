//! An app's sending settings: one type that the command line's flags (with
//! their environment variables and defaults) and an apps file's `[[app]]`
//! entries both produce, checked by one function, and applied to the
//! worker's configuration by one function. A new setting is a field here
//! (its flag, variable, default and check) and a line in [`AppSettings::apply`].

use std::time::Duration;

use clap::{Args, FromArgMatches};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::pipeline::config::defaults;
use crate::pipeline::{AppFaultPolicy, CallRules, CustomMerge, InDoubtPolicy, WorkerConfig};
use crate::tencent::body::MAX_BODY_BYTES;
use crate::tencent::classify::Classifier;
use crate::tencent::client::ApiConfig;

/// The fastest rate an app may be given, in calls per second.
pub const MAX_RATE: f64 = 100.0;

/// How one app's calls are made. In an apps file each key is a field's
/// name; on the command line, its flag or environment variable.
#[derive(Debug, Clone, PartialEq, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSettings {
    /// The API's base URL (scheme and host of the app's region).
    #[arg(
        long,
        env = "TIM_BASE_URL",
        default_value = "https://console.tim.qq.com"
    )]
    pub base_url: String,
    /// Calls per second for this app (fractions allowed).
    #[arg(long, env = "BROADCAST_RATE", default_value_t = defaults::RATE)]
    pub rate: f64,
    /// Milliseconds added to each second of the bucket, against clock jitter.
    #[arg(long, env = "BROADCAST_RATE_GUARD_MS", default_value_t = defaults::RATE_GUARD_MS)]
    pub rate_guard_ms: u64,
    /// Largest call body in bytes (at most 12000).
    #[arg(long, env = "BROADCAST_MAX_BATCH_BYTES", default_value_t = MAX_BODY_BYTES)]
    pub max_batch_bytes: usize,
    /// Jobs merged into one call at most (1 sends each job alone).
    #[arg(long, env = "BROADCAST_MAX_JOBS_PER_CALL")]
    pub max_jobs_per_call: Option<usize>,
    /// How custom jobs share a call (a message holds one TIMCustomElem):
    /// `separate`, or `envelope` (clients must decode it; see README).
    #[arg(long, env = "BROADCAST_CUSTOM_MERGE", value_enum, default_value_t = CustomMerge::Separate)]
    pub custom_merge: CustomMerge,
    /// Transient failures of one call before its jobs are dead-lettered.
    #[arg(long, env = "BROADCAST_MAX_ATTEMPTS", default_value_t = defaults::MAX_ATTEMPTS)]
    pub max_attempts: u32,
    /// Seconds a call may keep retrying after its first attempt that may
    /// have got through (keep under the service's 300 s repeat window).
    #[arg(long, env = "BROADCAST_MAX_RETRY_AGE_SECS", default_value_t = defaults::MAX_RETRY_AGE_SECS)]
    pub max_retry_age_secs: u64,
    /// First retry delay in milliseconds (doubles).
    #[arg(long, env = "BROADCAST_BACKOFF_MIN_MS", default_value_t = defaults::BACKOFF_MIN_MS)]
    pub backoff_min_ms: u64,
    /// Longest retry delay in milliseconds.
    #[arg(long, env = "BROADCAST_BACKOFF_MAX_MS", default_value_t = defaults::BACKOFF_MAX_MS)]
    pub backoff_max_ms: u64,
    /// Request timeout in milliseconds (longer than the service's own 3 s).
    #[arg(long, env = "TIM_REQUEST_TIMEOUT_MS", default_value_t = defaults::REQUEST_TIMEOUT_MS)]
    pub request_timeout_ms: u64,
    /// Connect timeout in milliseconds.
    #[arg(long, env = "TIM_CONNECT_TIMEOUT_MS", default_value_t = defaults::CONNECT_TIMEOUT_MS)]
    pub connect_timeout_ms: u64,
    /// On an app-wide fault (10007, SDKAppID or signature errors): halt and keep jobs, or dead-letter them.
    #[arg(long, env = "BROADCAST_ON_APP_FAULT", value_enum, default_value_t = AppFaultPolicy::Halt)]
    pub on_app_fault: AppFaultPolicy,
    /// Seconds between probe calls while halted by an app-wide fault.
    #[arg(long, env = "BROADCAST_APP_FAULT_PROBE_SECS", default_value_t = defaults::APP_FAULT_PROBE_SECS)]
    pub app_fault_probe_secs: f64,
    /// Reclassify ErrorCodes, e.g. `80003=permanent,12345=transient`
    /// (classes: transient, rate-limited, resign, permanent, permanent-call, app-fault).
    #[arg(long, env = "BROADCAST_CLASS_OVERRIDES", default_value = "")]
    pub class_overrides: String,
    /// Seconds a signed UserSig is valid (renewed at three quarters; at least 60).
    #[arg(long, env = "TIM_USERSIG_TTL_SECS", default_value_t = defaults::USERSIG_TTL_SECS)]
    pub usersig_ttl_secs: u64,
    /// Seconds within which a redelivered job's call is resent verbatim (under the service's 300 s repeat window).
    #[arg(long, env = "BROADCAST_RESEND_WINDOW_SECS", default_value_t = defaults::RESEND_WINDOW_SECS)]
    pub resend_window_secs: u64,
    /// A job whose call may have been delivered longer ago than that: dead-letter it as in-doubt, or resend (at least once).
    #[arg(long, env = "BROADCAST_IN_DOUBT", value_enum, default_value_t = InDoubtPolicy::DeadLetter)]
    pub in_doubt: InDoubtPolicy,
}

impl Default for AppSettings {
    /// The flags' defaults, whatever the environment says.
    fn default() -> Self {
        let command = Self::augment_args(clap::Command::new("defaults")).mut_args(|a| a.env(None));
        let matches = command
            .try_get_matches_from(["defaults"])
            .expect("every setting has a default");
        Self::from_arg_matches(&matches).expect("the defaults are settings")
    }
}

impl AppSettings {
    /// These settings with an apps file entry's keys over them: each key a
    /// field's name, of its type. `Err` says what is wrong with the keys
    /// (an unknown one, a value of another type); values are not checked
    /// here (see [`Self::mistakes`]).
    pub fn over(&self, entry: &toml::Table) -> Result<Self, String> {
        let Value::Object(mut merged) = serde_json::to_value(self).map_err(|e| e.to_string())?
        else {
            unreachable!("settings serialize as a map")
        };
        let overrides = serde_json::to_value(entry).map_err(|e| e.to_string())?;
        if let Value::Object(overrides) = overrides {
            merged.extend(overrides);
        }
        serde_json::from_value(Value::Object(merged)).map_err(|e| e.to_string())
    }

    /// Every value out of its range, each naming the apps file's key and the
    /// command line's variable.
    pub fn mistakes(&self) -> Vec<String> {
        let mut mistakes = Vec::new();
        let mut range = |ok: bool, key: &str, value: String, env: &str, rule: &str| {
            if !ok {
                mistakes.push(format!(
                    "{key} {value} is out of range: {env} must be {rule}"
                ));
            }
        };
        let rate = self.rate;
        range(
            rate.is_finite() && rate > 0.0 && rate <= MAX_RATE,
            "rate",
            rate.to_string(),
            "BROADCAST_RATE",
            &format!("a positive number of calls per second, at most {MAX_RATE}"),
        );
        range(
            (256..=MAX_BODY_BYTES).contains(&self.max_batch_bytes),
            "max_batch_bytes",
            self.max_batch_bytes.to_string(),
            "BROADCAST_MAX_BATCH_BYTES",
            &format!("from 256 to {MAX_BODY_BYTES}"),
        );
        if let Some(jobs) = self.max_jobs_per_call {
            let rule = "at least 1";
            range(
                jobs >= 1,
                "max_jobs_per_call",
                jobs.to_string(),
                "BROADCAST_MAX_JOBS_PER_CALL",
                rule,
            );
        }
        let attempts = self.max_attempts;
        range(
            attempts >= 1,
            "max_attempts",
            attempts.to_string(),
            "BROADCAST_MAX_ATTEMPTS",
            "at least 1",
        );
        let probe = self.app_fault_probe_secs;
        range(
            probe.is_finite() && probe > 0.0,
            "app_fault_probe_secs",
            probe.to_string(),
            "BROADCAST_APP_FAULT_PROBE_SECS",
            "positive",
        );
        if let Err(e) = self.base_url() {
            mistakes.push(e);
        }
        if let Err(e) = Classifier::parse_overrides(&self.class_overrides) {
            mistakes.push(format!("class_overrides: BROADCAST_CLASS_OVERRIDES: {e}"));
        }
        mistakes
    }

    /// Settings that work but defeat the service's repeat filter or its own
    /// timeout, said for the log.
    pub fn warnings(&self) -> Vec<&'static str> {
        let mut warnings = Vec::new();
        if self.request_timeout_ms <= 3_000 {
            warnings.push("TIM_REQUEST_TIMEOUT_MS is not above the service's own 3 s: slow successes will look like failures");
        }
        if self.max_retry_age_secs >= 300 {
            warnings.push("BROADCAST_MAX_RETRY_AGE_SECS reaches the service's 5-minute repeat window: a late retry may be delivered twice");
        }
        if self.resend_window_secs >= 300 {
            warnings.push("BROADCAST_RESEND_WINDOW_SECS reaches the service's 300 s repeat window: a resend may be delivered twice");
        }
        warnings
    }

    /// The API's address and timeouts for the app and admin account.
    pub fn api(&self, sdkappid: u64, identifier: String) -> Result<ApiConfig, String> {
        let mut api = ApiConfig::new(self.base_url()?, sdkappid, identifier);
        api.request_timeout = Duration::from_millis(self.request_timeout_ms);
        api.connect_timeout = Duration::from_millis(self.connect_timeout_ms);
        Ok(api)
    }

    /// Sets what these settings say in `config` (made with [`Self::api`]).
    pub fn apply(&self, config: &mut WorkerConfig) -> Result<(), String> {
        config.rate = self.rate;
        config.rate_guard = Duration::from_millis(self.rate_guard_ms);
        config.call = CallRules {
            max_bytes: self.max_batch_bytes,
            max_jobs: self.max_jobs_per_call.unwrap_or(usize::MAX),
            custom_merge: self.custom_merge,
        };
        let policy = &mut config.policy;
        policy.max_attempts = self.max_attempts;
        policy.max_retry_age = Duration::from_secs(self.max_retry_age_secs);
        policy.backoff_min = Duration::from_millis(self.backoff_min_ms.max(1));
        policy.backoff_max =
            Duration::from_millis(self.backoff_max_ms.max(self.backoff_min_ms).max(1));
        policy.on_app_fault = self.on_app_fault;
        policy.app_fault_probe = Duration::from_secs_f64(self.app_fault_probe_secs);
        config.classifier =
            Classifier::parse_overrides(&self.class_overrides).map_err(|e| e.to_string())?;
        config.usersig_ttl = Duration::from_secs(self.usersig_ttl_secs.max(60));
        config.resend_window = Duration::from_secs(self.resend_window_secs);
        config.in_doubt = self.in_doubt;
        Ok(())
    }

    fn base_url(&self) -> Result<url::Url, String> {
        let url: url::Url = self.base_url.parse().map_err(|e| {
            format!(
                "base_url: TIM_BASE_URL {:?} is not a URL: {e}",
                self.base_url
            )
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "base_url: TIM_BASE_URL must be http or https, not {:?}",
                url.scheme()
            ));
        }
        Ok(url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn the_defaults_are_the_flags_defaults() {
        let settings = AppSettings::default();
        assert_eq!(settings.rate, defaults::RATE);
        assert_eq!(settings.max_batch_bytes, MAX_BODY_BYTES);
        assert_eq!(settings.max_jobs_per_call, None);
        assert_eq!(settings.base_url, "https://console.tim.qq.com");
        assert!(settings.mistakes().is_empty(), "{:?}", settings.mistakes());
    }

    #[test]
    fn an_entry_goes_over_the_flags_key_by_key() {
        let flags = AppSettings {
            rate: 3.0,
            max_attempts: 4,
            ..AppSettings::default()
        };
        let app = flags
            .over(&table(
                "rate = 5\ncustom_merge = \"envelope\"\nmax_jobs_per_call = 7",
            ))
            .unwrap();
        assert_eq!(app.rate, 5.0, "an integer is a rate too");
        assert_eq!(app.custom_merge, CustomMerge::Envelope);
        assert_eq!(app.max_jobs_per_call, Some(7));
        assert_eq!(
            app.max_attempts, 4,
            "the flags' value where the entry says nothing"
        );
        assert!(flags
            .over(&table("rates = 5"))
            .unwrap_err()
            .contains("unknown field `rates`"));
        assert!(flags
            .over(&table("custom_merge = \"sometimes\""))
            .unwrap_err()
            .contains("sometimes"));
        assert!(flags.over(&table("rate = \"fast\"")).is_err());
    }

    #[test]
    fn one_check_names_the_key_and_the_variable() {
        let bad = AppSettings {
            rate: 0.0,
            max_batch_bytes: 20_000,
            max_jobs_per_call: Some(0),
            base_url: "::nope".into(),
            class_overrides: "10004=sometimes".into(),
            ..AppSettings::default()
        };
        let mistakes = bad.mistakes();
        assert_eq!(mistakes.len(), 5, "{mistakes:#?}");
        assert!(mistakes[0]
            .starts_with("rate 0 is out of range: BROADCAST_RATE must be a positive number"));
        assert!(mistakes[1].contains("BROADCAST_MAX_BATCH_BYTES must be from 256 to 12000"));
        assert!(mistakes[2].starts_with("max_jobs_per_call 0 is out of range"));
        assert!(mistakes[3].contains("TIM_BASE_URL \"::nope\" is not a URL"));
        assert!(mistakes[4].contains("10004=sometimes"));
        // The cap holds for the flags as for the file.
        let fast = AppSettings {
            rate: 150.0,
            ..AppSettings::default()
        };
        assert_eq!(fast.mistakes().len(), 1);
    }
}
