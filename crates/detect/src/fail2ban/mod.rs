//! fail2ban filters (placeholder).
use palisade_model::Net;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Error(pub String);

pub struct Failure {
    pub address: Option<Net>,
}

pub struct Filter;
impl Filter {
    pub fn load(_p: &Path, _o: &BTreeMap<String, String>) -> Result<Filter, Error> {
        Err(Error("todo".into()))
    }
    pub fn process_line(&mut self, _l: &str) -> Vec<Failure> {
        Vec::new()
    }
}
