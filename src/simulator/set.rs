//! Several apps on one listener: [`SimulatorSet`] owns the map from SDKAppID
//! to each app's [`Simulator`] (its own key, identifier, rate and state), and
//! picks the app a request is for. A set of one is the single-app simulator:
//! every request goes to its one app, whose own checks answer a call for
//! another SDKAppID, exactly as before sets existed.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::app::{Simulator, SimulatorConfig};
use super::checks::{unknown_app, url_sdkappid, Answer, UrlParams};
use super::state::Stats;

/// Why a set of apps cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum SimulatorSetError {
    #[error("a simulator needs at least one app")]
    NoApp,
    #[error("sdkappid {0} is given twice")]
    Duplicate(u64),
}

/// Why a `/simulator/*` request names no app this set serves.
#[derive(Debug, thiserror::Error)]
pub(super) enum SelectError {
    #[error("sdkappid {0:?} is not a number")]
    NotANumber(String),
    #[error("no app with sdkappid {0} is simulated here")]
    NotServed(u64),
    #[error("several apps are simulated here ({}): say which with ?sdkappid=", list(.0))]
    WhichApp(Vec<u64>),
}

fn list(sdkappids: &[u64]) -> String {
    let names: Vec<String> = sdkappids.iter().map(u64::to_string).collect();
    names.join(", ")
}

/// What a `/simulator/*` request is about: one app, or (when several are
/// served and it names none) all of them.
pub(super) enum Selection {
    App(Simulator),
    Every,
}

/// Apps served together, each by its own [`Simulator`]. Cheap to clone;
/// every clone sees the same apps.
#[derive(Clone)]
pub struct SimulatorSet {
    apps: Arc<BTreeMap<u64, Simulator>>,
}

impl From<Simulator> for SimulatorSet {
    fn from(simulator: Simulator) -> Self {
        Self {
            apps: Arc::new(BTreeMap::from([(simulator.sdkappid(), simulator)])),
        }
    }
}

impl SimulatorSet {
    /// One simulator per configuration; each SDKAppID at most once.
    pub fn new(
        configs: impl IntoIterator<Item = SimulatorConfig>,
    ) -> Result<Self, SimulatorSetError> {
        Self::of(configs.into_iter().map(Simulator::new))
    }

    /// A set of simulators already made (a test may keep clones of them).
    pub fn of(simulators: impl IntoIterator<Item = Simulator>) -> Result<Self, SimulatorSetError> {
        let mut apps = BTreeMap::new();
        for simulator in simulators {
            let sdkappid = simulator.sdkappid();
            if apps.insert(sdkappid, simulator).is_some() {
                return Err(SimulatorSetError::Duplicate(sdkappid));
            }
        }
        if apps.is_empty() {
            return Err(SimulatorSetError::NoApp);
        }
        Ok(Self {
            apps: Arc::new(apps),
        })
    }

    /// The app with this SDKAppID, if it is served.
    pub fn get(&self, sdkappid: u64) -> Option<&Simulator> {
        self.apps.get(&sdkappid)
    }

    /// Every app, by SDKAppID.
    pub fn simulators(&self) -> impl Iterator<Item = &Simulator> {
        self.apps.values()
    }

    /// Each app's counters, by SDKAppID.
    pub fn stats(&self) -> BTreeMap<u64, Stats> {
        self.apps
            .iter()
            .map(|(&sdkappid, simulator)| (sdkappid, simulator.stats()))
            .collect()
    }

    /// The one app when only one is served: it takes every request.
    fn only_app(&self) -> Option<&Simulator> {
        match self.apps.len() {
            1 => self.apps.values().next(),
            _ => None,
        }
    }

    /// The app an API call (or another path) is for, by its URL's
    /// `sdkappid`; or the service's answer when it names none served.
    pub(super) fn app_for_call(&self, query: Option<&str>) -> Result<&Simulator, Answer> {
        if let Some(simulator) = self.only_app() {
            return Ok(simulator);
        }
        let sdkappid = url_sdkappid(&UrlParams::parse(query))?;
        self.get(sdkappid).ok_or_else(unknown_app)
    }

    /// The app a `/simulator/*` request names with `?sdkappid=`; with none
    /// named, the only app, or every app when several are served.
    pub(super) fn select(&self, query: Option<&str>) -> Result<Selection, SelectError> {
        let params = UrlParams::parse(query);
        let Some(named) = params.get("sdkappid") else {
            return Ok(match self.only_app() {
                Some(simulator) => Selection::App(simulator.clone()),
                None => Selection::Every,
            });
        };
        let sdkappid = named
            .parse::<u64>()
            .map_err(|_| SelectError::NotANumber(named.to_string()))?;
        self.get(sdkappid)
            .map(|simulator| Selection::App(simulator.clone()))
            .ok_or(SelectError::NotServed(sdkappid))
    }

    /// The one app a `/simulator/*` request that acts on an app is about.
    pub(super) fn select_one(&self, query: Option<&str>) -> Result<Simulator, SelectError> {
        match self.select(query)? {
            Selection::App(simulator) => Ok(simulator),
            Selection::Every => Err(SelectError::WhichApp(self.apps.keys().copied().collect())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tencent::usersig::SecretKey;

    fn config(sdkappid: u64) -> SimulatorConfig {
        SimulatorConfig::new(sdkappid, "admin", SecretKey::new("k"))
    }

    #[test]
    fn a_set_needs_each_app_once() {
        assert!(matches!(
            SimulatorSet::new([]),
            Err(SimulatorSetError::NoApp)
        ));
        assert!(matches!(
            SimulatorSet::new([config(1), config(1)]),
            Err(SimulatorSetError::Duplicate(1))
        ));
    }

    #[test]
    fn one_app_takes_every_request_and_several_are_told_apart() {
        let one = SimulatorSet::new([config(1)]).unwrap();
        assert_eq!(one.app_for_call(Some("sdkappid=9")).unwrap().sdkappid(), 1);
        assert_eq!(one.app_for_call(None).unwrap().sdkappid(), 1);
        assert!(matches!(one.select(None), Ok(Selection::App(_))));

        let two = SimulatorSet::new([config(1), config(2)]).unwrap();
        let code = |query| two.app_for_call(query).err().map(|a| a.code);
        assert_eq!(code(Some("sdkappid=2&x=1")), None);
        assert_eq!(code(Some("sdkappid=3")), Some(70020));
        assert_eq!(code(Some("sdkappid=x")), Some(60006));
        assert_eq!(code(None), Some(60012));
        assert!(matches!(two.select(None), Ok(Selection::Every)));
        let refused = |query| two.select_one(query).err().unwrap().to_string();
        assert_eq!(
            refused(None),
            "several apps are simulated here (1, 2): say which with ?sdkappid="
        );
        assert_eq!(
            refused(Some("sdkappid=3")),
            "no app with sdkappid 3 is simulated here"
        );
        assert_eq!(
            refused(Some("sdkappid=x")),
            "sdkappid \"x\" is not a number"
        );
    }
}
