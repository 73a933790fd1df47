//! What a request asks for: the resource path, its query options, and the representation wanted.

use std::collections::HashMap;

use flotilla_api::resource::{self, ResourceDef, Subresource};
use flotilla_api::{ApiError, FieldValidation, Reason, query};

use crate::error::Result;

/// A path under `/api` or `/apis`.
#[derive(Debug)]
pub(crate) enum Route {
    /// `/api`
    CoreVersions,
    /// `/apis`
    Groups,
    /// `/apis/<group>`
    Group(String),
    /// `/api/v1`, `/apis/<group>/<version>`
    Resources { group: String, version: String },
    /// A collection, an object, or an object's subresource.
    Object(Target),
    /// A custom metric of objects (`custom.metrics.k8s.io`).
    CustomMetric(crate::custom_metrics::MetricRequest),
}

#[derive(Clone, Debug)]
pub(crate) struct Target {
    pub(crate) resource: &'static ResourceDef,
    pub(crate) namespace: Option<String>,
    pub(crate) name: Option<String>,
    pub(crate) subresource: Option<Subresource>,
}

/// 404, as upstream answers paths it does not serve.
pub(crate) fn not_served() -> ApiError {
    ApiError::new(Reason::NotFound, "the server could not find the requested resource")
}

pub(crate) fn parse_path(path: &str) -> Result<Route> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api"] => return Ok(Route::CoreVersions),
        ["apis"] => return Ok(Route::Groups),
        ["apis", group] => return Ok(Route::Group((*group).to_string())),
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(not_served().into()),
    };
    if group == crate::custom_metrics::GROUP && !rest.is_empty() {
        return crate::custom_metrics::parse(version, rest).map(Route::CustomMetric);
    }
    if rest.is_empty() {
        if group == crate::custom_metrics::GROUP && version == crate::custom_metrics::VERSION {
            return Ok(Route::Resources { group: group.into(), version: version.into() });
        }
        if !resource::group_versions().contains(&(group, version)) {
            return Err(not_served().into());
        }
        return Ok(Route::Resources { group: group.into(), version: version.into() });
    }
    let find = |plural: &str| resource::find(group, version, plural).ok_or_else(not_served);
    // `namespaces/<ns>/<resource>/…` unless the third segment is a namespace's own subresource.
    let (namespace, plural, name, sub) = match rest {
        ["namespaces", ns, plural, more @ ..] if !matches!(*plural, "status" | "finalize") => {
            (Some((*ns).to_string()), *plural, more.first().copied(), more.get(1).copied())
        }
        [plural, more @ ..] => (None, *plural, more.first().copied(), more.get(1).copied()),
        [] => unreachable!("rest is not empty"),
    };
    if rest.len() > if namespace.is_some() { 5 } else { 3 } {
        return Err(not_served().into());
    }
    let def = find(plural)?;
    if namespace.is_some() && !def.namespaced {
        return Err(not_served().into());
    }
    let subresource = match sub {
        None => None,
        Some(s) => Some(def.subresources.iter().copied().find(|sr| sr.name() == s).ok_or_else(not_served)?),
    };
    Ok(Route::Object(Target { resource: def, namespace, name: name.map(str::to_string), subresource }))
}

/// The query string's parameters. The first of repeated values counts, as upstream's
/// conversions read them, except for list-valued ones (`dryRun`), whose every value counts.
#[derive(Debug, Default)]
pub(crate) struct Query(HashMap<String, Vec<String>>);

impl Query {
    pub(crate) fn parse(query: Option<&str>) -> Query {
        let mut map: HashMap<String, Vec<String>> = HashMap::new();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            map.entry(decode(key)).or_default().push(decode(value));
        }
        Query(map)
    }

    /// The parameter's first value, as upstream reads a single-valued parameter.
    fn first(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|values| values.first()).map(String::as_str)
    }

    /// The first value, unless it is empty.
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.first(key).filter(|v| !v.is_empty())
    }

    /// Whether the parameter is there at all, empty or not (upstream's pointer fields).
    pub(crate) fn has(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }

    /// Every value of a list-valued parameter, in order.
    pub(crate) fn all(&self, key: &str) -> &[String] {
        self.0.get(key).map(Vec::as_slice).unwrap_or_default()
    }

    /// A boolean parameter (absent is false), spelled as any client spells it.
    pub(crate) fn flag(&self, key: &str) -> bool {
        self.first(key).is_some_and(query::boolean)
    }

    /// An integer parameter; present but not an integer (empty included) is a 400.
    pub(crate) fn number(&self, key: &str) -> Result<Option<i64>> {
        Ok(self.first(key).map(query::integer).transpose()?)
    }

    pub(crate) fn field_validation(&self) -> Result<FieldValidation> {
        Ok(self.get("fieldValidation").map(FieldValidation::parse).transpose()?.unwrap_or_default())
    }

    /// `dryRun`, a list: every value must be `All` (an empty one too is refused), so that no
    /// spelling of a dry run is taken as a write.
    pub(crate) fn dry_run(&self) -> Result<bool> {
        let values = self.all("dryRun");
        match values.iter().find(|v| *v != "All") {
            None => Ok(!values.is_empty()),
            Some(other) => {
                Err(ApiError::bad_request(format!("unsupported dryRun value {other:?}, only \"All\" is supported"))
                    .into())
            }
        }
    }
}

/// Whether the response is indented, as upstream's `isPrettyPrint` decides: by `?pretty` when
/// it is one of Go's booleans (any other non-empty value is false), else (absent or empty) for
/// curl, Wget and browsers.
pub(crate) fn pretty(uri: &http::Uri, headers: &http::HeaderMap) -> bool {
    if let Some(value) = Query::parse(uri.query()).get("pretty") {
        return query::parse_bool(value).unwrap_or(false);
    }
    let agent = headers.get(http::header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or_default();
    ["curl", "Wget", "Mozilla/5.0"].iter().any(|tool| agent.starts_with(tool))
}

/// Percent-decoding, with `+` as a space (form encoding).
pub(crate) fn decode(text: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                if let (Some(high), Some(low)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    out.push(high << 4 | low);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The representation an `Accept` header asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Representation {
    /// The object or list itself.
    Object,
    /// A `meta.k8s.io` Table, in this version (`v1` or `v1beta1`).
    Table(&'static str),
    /// `PartialObjectMetadata` / `PartialObjectMetadataList`, in this version.
    Metadata(&'static str),
}

/// Picks the first representation we serve from an `Accept` header; JSON otherwise.
pub(crate) fn representation(accept: Option<&str>) -> Result<Representation> {
    let Some(accept) = accept else { return Ok(Representation::Object) };
    let mut acceptable = false;
    for entry in accept.split(',') {
        let mut parts = entry.split(';').map(str::trim);
        let media = parts.next().unwrap_or("");
        let params: HashMap<&str, &str> = parts.filter_map(|p| p.split_once('=')).collect();
        if !matches!(media, "application/json" | "application/*" | "*/*" | "application/yaml") {
            continue;
        }
        acceptable = true;
        let version = match params.get("v") {
            Some(&"v1") => "v1",
            Some(&"v1beta1") => "v1beta1",
            _ => "v1",
        };
        match (params.get("as"), params.get("g")) {
            (None, _) => return Ok(Representation::Object),
            (Some(&"Table"), Some(&"meta.k8s.io")) => return Ok(Representation::Table(version)),
            (Some(&("PartialObjectMetadata" | "PartialObjectMetadataList")), Some(&"meta.k8s.io")) => {
                return Ok(Representation::Metadata(version));
            }
            _ => continue,
        }
    }
    if acceptable {
        Ok(Representation::Object)
    } else {
        Err(ApiError::new(
            Reason::NotAcceptable,
            format!("only the following media types are accepted: application/json; the request asked for {accept:?}"),
        )
        .into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(path: &str) -> Target {
        match parse_path(path).unwrap() {
            Route::Object(target) => target,
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn paths_name_what_they_address() {
        let t = object("/api/v1/namespaces/default/pods/web/status");
        assert_eq!(
            (t.resource.plural, t.namespace.as_deref(), t.name.as_deref(), t.subresource),
            ("pods", Some("default"), Some("web"), Some(Subresource::Status))
        );
        let t = object("/api/v1/namespaces");
        assert_eq!((t.resource.plural, t.name), ("namespaces", None));
        let t = object("/api/v1/namespaces/kube-system");
        assert_eq!((t.resource.plural, t.name.as_deref()), ("namespaces", Some("kube-system")));
        let t = object("/api/v1/namespaces/kube-system/status");
        assert_eq!((t.resource.plural, t.subresource), ("namespaces", Some(Subresource::Status)));
        let t = object("/apis/apps/v1/deployments");
        assert_eq!((t.resource.kind, t.namespace), ("Deployment", None));
        let t = object("/apis/apps/v1/namespaces/ns/deployments/web/scale");
        assert_eq!(t.subresource, Some(Subresource::Scale));
        assert!(matches!(parse_path("/apis/apps/v1").unwrap(), Route::Resources { .. }));
        assert!(matches!(parse_path("/apis/apps").unwrap(), Route::Group(g) if g == "apps"));
    }

    #[test]
    fn unserved_paths_are_not_found() {
        for path in [
            "/api/v2",
            "/apis/apps/v1/widgets",
            "/api/v1/namespaces/x/nodes",
            "/api/v1/namespaces/x/pods/p/exec/extra",
            "/apis/apps/v1beta1/deployments",
        ] {
            assert!(parse_path(path).is_err(), "{path}");
        }
    }

    #[test]
    fn queries_are_percent_decoded() {
        let q = Query::parse(Some("labelSelector=app%3Dweb%2Ctier+in+%28a%29&limit=500&watch=true"));
        assert_eq!(q.get("labelSelector"), Some("app=web,tier in (a)"));
        assert_eq!(q.number("limit").unwrap(), Some(500));
        assert!(q.flag("watch"));
    }

    /// Every client's spelling of a boolean, the first of repeated values, and a dry run that
    /// no extra value turns into a write.
    #[test]
    fn parameters_read_as_upstream_reads_them() {
        let q = Query::parse(Some("watch=True&limit=5&limit=abc&force=&orphanDependents"));
        assert!(q.flag("watch") && q.has("force") && q.flag("force") && q.flag("orphanDependents"));
        assert!(!Query::parse(Some("watch=False")).flag("watch") && !Query::parse(None).flag("watch"));
        assert_eq!(q.number("limit").unwrap(), Some(5));
        assert!(Query::parse(Some("limit=")).number("limit").is_err());
        assert!(Query::parse(Some("dryRun=All&dryRun=All")).dry_run().unwrap());
        assert!(!Query::parse(Some("watch=1")).dry_run().unwrap());
        for sneaky in ["dryRun=&dryRun=All", "dryRun=All&dryRun=", "dryRun=all", "dryRun"] {
            assert!(Query::parse(Some(sneaky)).dry_run().is_err(), "{sneaky}");
        }
    }

    #[test]
    fn kubectl_accept_headers_pick_tables() {
        let kubectl = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(representation(Some(kubectl)).unwrap(), Representation::Table("v1"));
        assert_eq!(representation(Some("application/json")).unwrap(), Representation::Object);
        assert_eq!(representation(Some("application/vnd.kubernetes.protobuf, */*")).unwrap(), Representation::Object);
        assert!(representation(Some("application/vnd.kubernetes.protobuf")).is_err());
    }
}
