//! Routes: how requests for each service are forwarded, and which service a gateway's Host
//! names.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;

use super::headers::{request_key, HeaderValues};
use super::pool::Pool;
use crate::addr::Addr;
use crate::net::OwnAddrs;
use crate::proxy::config::RouteConfig;
use crate::proxy::error::ProxyError;
use crate::proxy::failover::{Attempts, Target};
use crate::proxy::metrics::ListenerMetrics;
use crate::registry::ServiceName;
use crate::snapshot::{ServiceCell, Store};
use crate::throttle::Throttle;

/// The connection pool every HTTP listener shares for one connect timeout.
pub(crate) type Upstream = Arc<Pool>;

/// How requests for one service are forwarded.
pub(crate) struct Route {
    /// The service name, for logs and error answers.
    pub(crate) service: String,
    /// The service's snapshot cell.
    pub(crate) cell: Arc<ServiceCell>,
    /// Balance, retries, timeouts and Host rewriting.
    pub(crate) config: RouteConfig,
    /// The connection pool for this route's connect timeout.
    pub(crate) pool: Upstream,
    /// Throttles connect-failure warnings.
    pub(crate) throttle: Throttle,
}

impl Route {
    /// The instances a request from `peer` with `headers` tries, the first one picked.
    ///
    /// # Errors
    /// [`ProxyError::NoInstances`] when the service has none usable.
    pub(crate) fn attempts<'a>(
        &'a self,
        metrics: &'a ListenerMetrics,
        headers: &(impl HeaderValues + ?Sized),
        peer: SocketAddr,
    ) -> Result<(Attempts<'a>, Addr), ProxyError> {
        let target = Target {
            cell: &self.cell,
            service: &self.service,
            retries: self.config.retries,
            throttle: &self.throttle,
        };
        let key = (self.config.hash_key.as_ref()).and_then(|k| request_key(k, headers, peer));
        Attempts::start(&target, metrics, key)
    }
}

/// Every route an HTTP listener may use, shared by all HTTP listeners and gateways.
pub(crate) struct Routes {
    /// Where services not configured by a `[[service]]` block are looked up.
    store: Arc<Store>,
    /// Routes of `[[service]]` blocks, whatever their protocol, so gateways use their settings.
    configured: HashMap<String, Arc<Route>>,
    /// Routes made on first use for services known only from the registry.
    discovered: DashMap<String, Arc<Route>>,
    /// One pool per distinct connect timeout, so most setups share a single pool; shared with
    /// the routes a reload makes, so kept-alive upstream connections survive it.
    pools: Arc<Mutex<HashMap<Duration, Upstream>>>,
    /// cairn's own listeners, which no client ever dials.
    own: Arc<OwnAddrs>,
    /// This node's zone, for the policy of discovered services.
    zone: Option<String>,
}

impl Routes {
    /// Routes for every configured service, reading `store`.
    pub(crate) fn new<'a>(
        store: Arc<Store>,
        services: impl IntoIterator<Item = (&'a ServiceName, &'a RouteConfig)>,
        zone: Option<String>,
        own: Arc<OwnAddrs>,
    ) -> Arc<Routes> {
        Routes::build(store, services, zone, own, Arc::default())
    }

    /// The routes of a reloaded config, reusing these routes' connection pools.
    pub(crate) fn renew<'a>(
        &self,
        services: impl IntoIterator<Item = (&'a ServiceName, &'a RouteConfig)>,
        zone: Option<String>,
    ) -> Arc<Routes> {
        Routes::build(
            Arc::clone(&self.store),
            services,
            zone,
            Arc::clone(&self.own),
            Arc::clone(&self.pools),
        )
    }

    fn build<'a>(
        store: Arc<Store>,
        services: impl IntoIterator<Item = (&'a ServiceName, &'a RouteConfig)>,
        zone: Option<String>,
        own: Arc<OwnAddrs>,
        pools: Arc<Mutex<HashMap<Duration, Upstream>>>,
    ) -> Arc<Routes> {
        let mut routes = Routes {
            store,
            configured: HashMap::new(),
            discovered: DashMap::new(),
            pools,
            own,
            zone,
        };
        for (name, config) in services {
            let route = routes.make(name, config.clone());
            routes.configured.insert(name.to_string(), Arc::new(route));
        }
        Arc::new(routes)
    }

    /// The route of a configured service.
    pub(crate) fn configured(&self, service: &str) -> Option<Arc<Route>> {
        self.configured.get(service).cloned()
    }

    /// The route of `service` if it is configured or in the registry; never creates a cell for a
    /// name the registry has not mentioned, so random Host headers cost nothing.
    pub(crate) fn find(&self, service: &str) -> Option<Arc<Route>> {
        if let Some(route) = self.configured.get(service) {
            return Some(Arc::clone(route));
        }
        if let Some(route) = self.discovered.get(service) {
            if !route.cell.is_retired() {
                return Some(Arc::clone(&route));
            }
        }
        // Unknown, or pruned from the store since: a route to the service's current cell.
        self.discovered
            .remove_if(service, |_, route| route.cell.is_retired());
        self.store.get(service)?;
        // A service met only through a gateway gets the default policy, in this node's zone.
        let config = RouteConfig::default();
        let route = self.make(service, config.clone());
        route.cell.configure(config.policy(self.zone.clone()));
        let route = Arc::new(route);
        Some(Arc::clone(
            &self.discovered.entry(service.to_string()).or_insert(route),
        ))
    }

    /// The route a gateway takes for `host`: the service it names, or the lowercase form of it.
    pub(crate) fn for_host<'h>(
        &self,
        host: &'h str,
        suffix: Option<&str>,
    ) -> (&'h str, Option<Arc<Route>>) {
        let name = service_from_host(host, suffix);
        let found = self.find(name).or_else(|| {
            let lower = name.to_ascii_lowercase();
            (lower != name).then(|| self.find(&lower)).flatten()
        });
        (name, found)
    }

    fn make(&self, service: &str, config: RouteConfig) -> Route {
        let pool = Arc::clone(
            self.pools
                .lock()
                .expect("the pool map lock is never held across a panic")
                .entry(config.connect_timeout)
                .or_insert_with(|| Pool::new(config.connect_timeout, Arc::clone(&self.own))),
        );
        Route {
            service: service.to_string(),
            cell: self.store.cell(service),
            config,
            pool,
            throttle: Throttle::per_second(),
        }
    }
}

/// Where a listener sends requests.
pub(crate) enum Routing {
    /// Every request goes to this service.
    Service(String),
    /// The Host header names the service; `suffix` is stripped from it first.
    Gateway {
        /// Lowercase suffix such as `.svc.local`.
        suffix: Option<String>,
    },
}

impl Routing {
    /// The route of a request whose Host is `host`, in `routes`.
    ///
    /// # Errors
    /// The answer for a service that is not there, or a gateway request without a Host.
    pub(crate) fn route(
        &self,
        routes: &Routes,
        host: Option<&str>,
    ) -> Result<Arc<Route>, ProxyError> {
        match self {
            Routing::Service(name) => routes
                .configured(name)
                .or_else(|| routes.find(name))
                .ok_or_else(|| ProxyError::NoInstances {
                    service: name.clone(),
                }),
            Routing::Gateway { suffix } => {
                let host = host.ok_or(ProxyError::NoHost)?;
                match routes.for_host(host, suffix.as_deref()) {
                    (_, Some(route)) => Ok(route),
                    (name, None) => Err(ProxyError::UnknownService {
                        name: name.to_string(),
                        host: host.to_string(),
                    }),
                }
            }
        }
    }
}

/// The service a gateway routes `host` to: the host without its port, trailing dot and suffix.
fn service_from_host<'h>(host: &'h str, suffix: Option<&str>) -> &'h str {
    let mut name = match host.rsplit_once(':') {
        Some((h, port)) if !h.ends_with(':') && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    name = name.strip_suffix('.').unwrap_or(name);
    if let Some(suffix) = suffix {
        let cut = name.len().wrapping_sub(suffix.len());
        if name.len() > suffix.len()
            && name.is_char_boundary(cut)
            && name[cut..].eq_ignore_ascii_case(suffix)
        {
            name = &name[..cut];
        }
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_hosts_name_services() {
        assert_eq!(service_from_host("orders", None), "orders");
        assert_eq!(service_from_host("orders:8080", None), "orders");
        assert_eq!(
            service_from_host("orders.svc.local", Some(".svc.local")),
            "orders"
        );
        assert_eq!(
            service_from_host("orders.SVC.local:80", Some(".svc.local")),
            "orders"
        );
        assert_eq!(
            service_from_host("orders.svc.local.", Some(".svc.local")),
            "orders"
        );
        assert_eq!(service_from_host("orders", Some(".svc.local")), "orders");
        assert_eq!(
            service_from_host(".svc.local", Some(".svc.local")),
            ".svc.local"
        );
        assert_eq!(service_from_host("[::1]:80", None), "[::1]");
        assert_eq!(service_from_host("é.svc.local", Some(".svc.local")), "é");
    }
}
