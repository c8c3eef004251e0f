//! The query strings bouncers send, parsed strictly: bounded in length and
//! count, each parameter known, each value checked.

use std::net::IpAddr;

use palisade_model::Net;

/// Longest query string accepted.
pub const MAX_QUERY_LEN: usize = 2048;
/// Most parameters in one query.
pub const MAX_PARAMS: usize = 16;
/// Most items in one comma-separated list.
pub const MAX_LIST_ITEMS: usize = 16;
/// Longest item of a list.
pub const MAX_ITEM_LEN: usize = 128;

/// Why a query was refused (answered 400 with this text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// The query string is longer than [`MAX_QUERY_LEN`] bytes.
    #[error("the query is longer than {MAX_QUERY_LEN} bytes")]
    TooLong,
    /// The query has more than [`MAX_PARAMS`] parameters.
    #[error("the query has more than {MAX_PARAMS} parameters")]
    TooMany,
    /// The query does not decode to UTF-8.
    #[error("the query is not valid percent-encoded UTF-8")]
    Encoding,
    /// A parameter the endpoint does not take (and the ones it does).
    #[error("unknown parameter {0:?}; this endpoint takes {1}")]
    Unknown(String, &'static str),
    /// A parameter given twice.
    #[error("parameter {0:?} is given twice")]
    Repeated(String),
    /// A parameter whose value is not valid (name, and why).
    #[error("parameter {0:?} has an invalid value: {1}")]
    Value(&'static str, String),
}

/// The filters of `GET /v1/decisions/stream`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamQuery {
    /// `startup=true`: the bouncer starts afresh and gets every ban.
    pub startup: bool,
    /// Which bans it wants.
    pub filter: Filter,
}

/// The filters both endpoints share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// Single addresses wanted (`scopes` includes `ip`; the default).
    pub ip: bool,
    /// Networks wanted (`scopes` includes `range`; the default).
    pub range: bool,
    /// Only bans of these origins; `None`: any.
    pub origins: Option<Vec<String>>,
    /// Only scenarios containing one of these (lower case); empty: any.
    pub scenarios_containing: Vec<String>,
    /// No scenario containing one of these (lower case).
    pub scenarios_not_containing: Vec<String>,
}

impl Default for Filter {
    fn default() -> Filter {
        Filter {
            ip: true,
            range: true,
            origins: None,
            scenarios_containing: Vec::new(),
            scenarios_not_containing: Vec::new(),
        }
    }
}

/// The filters of `GET /v1/decisions`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LookupQuery {
    /// The address or network asked about.
    pub target: Option<Net>,
    /// `true`: decisions containing the target; `false`: inside it.
    pub contains: bool,
    /// A `type` other than `ban` matches nothing palisade holds.
    pub only_other_types: bool,
    /// Which bans are wanted.
    pub filter: Filter,
}

const STREAM_KEYS: &str =
    "startup, scopes, origins, scenarios_containing, scenarios_not_containing";
const LOOKUP_KEYS: &str = "ip, range, scope, value, type, contains, origins, scenarios_containing, scenarios_not_containing";

/// Parses the query of `GET /v1/decisions/stream`.
pub fn stream(query: Option<&str>) -> Result<StreamQuery, QueryError> {
    let mut q = StreamQuery::default();
    for (k, v) in pairs(query)? {
        match k.as_str() {
            "startup" => q.startup = boolean("startup", &v)?,
            _ if filter_param(&mut q.filter, &k, &v)? => {}
            _ => return Err(QueryError::Unknown(k, STREAM_KEYS)),
        }
    }
    Ok(q)
}

/// Parses the query of `GET /v1/decisions`; without `ip`, `range` or
/// `value` every ban is asked for.
pub fn lookup(query: Option<&str>) -> Result<LookupQuery, QueryError> {
    let mut q = LookupQuery {
        contains: true,
        ..Default::default()
    };
    let (mut ip, mut range, mut scope, mut value) = (None, None, None, None);
    for (k, v) in pairs(query)? {
        match k.as_str() {
            "ip" => ip = Some(address("ip", &v)?),
            "range" => range = Some(network("range", &v)?),
            "scope" => scope = Some(v.to_ascii_lowercase()),
            "value" => value = Some(v),
            "type" => q.only_other_types = !v.eq_ignore_ascii_case("ban"),
            "contains" => q.contains = boolean("contains", &v)?,
            _ if filter_param(&mut q.filter, &k, &v)? => {}
            _ => return Err(QueryError::Unknown(k, LOOKUP_KEYS)),
        }
    }
    if let (Some(scope), Some(value)) = (&scope, &value) {
        match scope.as_str() {
            "ip" => ip = Some(address("value", value)?),
            "range" => range = Some(network("value", value)?),
            _ => q.only_other_types = true,
        }
    }
    q.target = ip.or(range);
    Ok(q)
}

/// Applies a shared filter parameter; `false` when `key` is not one.
fn filter_param(f: &mut Filter, key: &str, value: &str) -> Result<bool, QueryError> {
    match key {
        "scopes" => {
            let scopes = list("scopes", value)?;
            f.ip = scopes.iter().any(|s| s.eq_ignore_ascii_case("ip"));
            f.range = scopes.iter().any(|s| s.eq_ignore_ascii_case("range"));
        }
        "origins" => f.origins = Some(list("origins", value)?),
        "scenarios_containing" => {
            f.scenarios_containing = lowercase(list("scenarios_containing", value)?)
        }
        "scenarios_not_containing" => {
            f.scenarios_not_containing = lowercase(list("scenarios_not_containing", value)?)
        }
        _ => return Ok(false),
    }
    Ok(true)
}

impl Filter {
    /// Whether a ban of `target` with this origin and scenario passes.
    pub fn admits(&self, target: &Net, origin: &str, scenario: &str) -> bool {
        let scope_ok = if target.is_host() {
            self.ip
        } else {
            self.range
        };
        let origin_ok = self
            .origins
            .as_ref()
            .is_none_or(|o| o.iter().any(|x| x == origin));
        let s = scenario.to_lowercase();
        let containing_ok = self.scenarios_containing.is_empty()
            || self.scenarios_containing.iter().any(|x| s.contains(x));
        let not_containing_ok = !self.scenarios_not_containing.iter().any(|x| s.contains(x));
        scope_ok && origin_ok && containing_ok && not_containing_ok
    }
}

fn lowercase(v: Vec<String>) -> Vec<String> {
    v.into_iter().map(|s| s.to_lowercase()).collect()
}

fn pairs(query: Option<&str>) -> Result<Vec<(String, String)>, QueryError> {
    let query = query.unwrap_or("");
    if query.len() > MAX_QUERY_LEN {
        return Err(QueryError::TooLong);
    }
    let mut out: Vec<(String, String)> = Vec::new();
    for part in query.split('&').filter(|p| !p.is_empty()) {
        if out.len() == MAX_PARAMS {
            return Err(QueryError::TooMany);
        }
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        let (k, v) = (decode(k)?, decode(v)?);
        if out.iter().any(|(seen, _)| *seen == k) {
            return Err(QueryError::Repeated(k));
        }
        out.push((k, v));
    }
    Ok(out)
}

fn decode(s: &str) -> Result<String, QueryError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3).ok_or(QueryError::Encoding)?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| QueryError::Encoding)?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    let text = String::from_utf8(out).map_err(|_| QueryError::Encoding)?;
    if text.chars().any(char::is_control) {
        return Err(QueryError::Encoding);
    }
    Ok(text)
}

fn boolean(key: &'static str, v: &str) -> Result<bool, QueryError> {
    match v {
        "true" | "1" => Ok(true),
        "false" | "0" | "" => Ok(false),
        _ => Err(QueryError::Value(key, "use true or false".into())),
    }
}

fn list(key: &'static str, v: &str) -> Result<Vec<String>, QueryError> {
    let items: Vec<String> = v
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if items.len() > MAX_LIST_ITEMS {
        return Err(QueryError::Value(
            key,
            format!("at most {MAX_LIST_ITEMS} items"),
        ));
    }
    if items.iter().any(|i| i.len() > MAX_ITEM_LEN) {
        return Err(QueryError::Value(
            key,
            format!("an item is longer than {MAX_ITEM_LEN} bytes"),
        ));
    }
    Ok(items)
}

fn address(key: &'static str, v: &str) -> Result<Net, QueryError> {
    v.parse::<IpAddr>()
        .map(Net::host)
        .map_err(|_| QueryError::Value(key, format!("{v:?} is not an IP address")))
}

fn network(key: &'static str, v: &str) -> Result<Net, QueryError> {
    v.parse::<Net>()
        .map_err(|e| QueryError::Value(key, format!("{v:?} is not a network: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bouncers_queries_parse() {
        assert!(stream(Some("startup=true")).unwrap().startup);
        assert!(!stream(Some("")).unwrap().startup);
        assert!(!stream(None).unwrap().startup);
        let q = stream(Some("startup=true&scopes=ip,range&origins=cscli")).unwrap();
        assert!(q.filter.ip && q.filter.range);
        assert_eq!(q.filter.origins, Some(vec!["cscli".to_string()]));
        let q = stream(Some("scopes=Ip")).unwrap();
        assert!(q.filter.ip && !q.filter.range);
        let q = lookup(Some("ip=198.18.0.9")).unwrap();
        assert_eq!(q.target, Some("198.18.0.9".parse().unwrap()));
        let q = lookup(Some("scope=range&value=198.18.5.0%2F24&contains=false")).unwrap();
        assert_eq!(q.target, Some("198.18.5.0/24".parse().unwrap()));
        assert!(!q.contains);
    }

    #[test]
    fn hostile_queries_are_refused() {
        let long = format!("origins={}", "a".repeat(MAX_QUERY_LEN));
        assert_eq!(stream(Some(&long)), Err(QueryError::TooLong));
        let many: Vec<String> = (0..=MAX_PARAMS).map(|i| format!("x{i}=1")).collect();
        let many = many.join("&");
        assert_eq!(stream(Some(&many)).unwrap_err(), QueryError::TooMany);
        assert_eq!(
            stream(Some("startup=true&startup=false")).unwrap_err(),
            QueryError::Repeated("startup".into())
        );
        assert!(matches!(
            stream(Some("startup=yes")),
            Err(QueryError::Value(..))
        ));
        assert!(matches!(
            stream(Some("drop=table")),
            Err(QueryError::Unknown(..))
        ));
        assert_eq!(stream(Some("origins=%ZZ")), Err(QueryError::Encoding));
        assert_eq!(
            stream(Some("origins=%0d%0aSet-Cookie:x")),
            Err(QueryError::Encoding)
        );
        assert_eq!(stream(Some("origins=%ff")), Err(QueryError::Encoding));
        let items = vec!["a"; MAX_LIST_ITEMS + 1].join(",");
        assert!(matches!(
            stream(Some(&format!("origins={items}"))),
            Err(QueryError::Value(..))
        ));
        assert!(matches!(
            lookup(Some("ip=198.18.0.0/24")),
            Err(QueryError::Value(..))
        ));
        assert!(matches!(
            lookup(Some("range=198.18.0.1/24")),
            Err(QueryError::Value(..))
        ));
        assert!(matches!(
            lookup(Some("ip=not-an-ip")),
            Err(QueryError::Value(..))
        ));
    }
}
