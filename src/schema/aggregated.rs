//! The shape of aggregated events (spec section 7): the templates AWS offers and the
//! dimensions of a summary. Shared by what computes them (`aggregate`) and what reads AWS's own
//! (`ingest`).

/// The templates AWS offers, with their primary dimension.
pub const TEMPLATES: [(&str, Dim); 3] = [("API_ACTIVITY", Dim::EventName), ("RESOURCE_ACCESS", Dim::Resource), ("USER_ACTIONS", Dim::User)];

/// The template whose primary dimension is `dimension` (as AWS names it in `summary`).
pub fn template_of(dimension: &str) -> Option<&'static str> {
    TEMPLATES.iter().find(|(_, d)| d.name() == dimension).map(|(t, _)| *t)
}

/// A dimension of a summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dim {
    EventName,
    Resource,
    User,
    Agent,
    Ip,
    Error,
}

impl Dim {
    pub const ALL: [Dim; 6] = [Dim::EventName, Dim::Resource, Dim::User, Dim::Agent, Dim::Ip, Dim::Error];

    /// As AWS names it in `summary`.
    pub fn name(self) -> &'static str {
        match self {
            Dim::EventName => "eventName",
            Dim::Resource => "resourceARN",
            Dim::User => "userIdentity",
            Dim::Agent => "userAgent",
            Dim::Ip => "sourceIPAddress",
            Dim::Error => "errorCode",
        }
    }
}
