//! Which sites a writer may bill: a [`Scope`] travels with a write (from
//! the credential that sent it), and [`Scoped`] turns every point of
//! another site into an ignored item, counted per site, before billing
//! sees it.

use std::collections::{BTreeMap, BTreeSet};

use super::intake::FeedReport;
use os_credits_ingest::{Decoded, Item};

/// Reason counted for points of a site the writer may not bill.
pub const SITE_NOT_ALLOWED: &str = "site not allowed";

/// The sites one writer may bill.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Scope {
    /// The writer (user or token name), for counts and logs.
    pub writer: String,
    /// The `location_id`s it may bill.
    pub sites: BTreeSet<String>,
}

impl Scope {
    /// Whether the writer may bill `site`.
    pub fn allows(&self, site: &str) -> bool {
        self.sites.contains(site)
    }

    /// The sites as one text (`8676,8677`), as the inbox keeps them.
    pub fn sites_text(&self) -> String {
        self.sites.iter().cloned().collect::<Vec<_>>().join(",")
    }

    /// The scope of `writer` from [`Scope::sites_text`].
    pub fn from_text(writer: &str, sites: &str) -> Scope {
        Scope {
            writer: writer.to_owned(),
            sites: sites
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        }
    }
}

/// The items of `inner`, with each point of a site outside `scope` turned
/// into [`Item::Ignored`]`(`[`SITE_NOT_ALLOWED`]`)` and counted in
/// [`Scoped::refused`]. Items naming no site pass unchanged (billing
/// refuses or ignores them on their own merits).
pub struct Scoped<'s, I> {
    inner: I,
    scope: Option<&'s Scope>,
    refused: BTreeMap<String, usize>,
}

impl<'s, I> Scoped<'s, I> {
    /// `inner` filtered by `scope` (`None`: every site allowed).
    pub fn new(inner: I, scope: Option<&'s Scope>) -> Self {
        Scoped {
            inner,
            scope,
            refused: BTreeMap::new(),
        }
    }

    /// Reads every item and reports how many there were and which were
    /// refused (nothing billed): a follower's check before it stores a
    /// body.
    pub fn refusals<'a>(mut self) -> FeedReport
    where
        I: Iterator<Item = (usize, Item<'a>)>,
    {
        let lines = self.by_ref().count();
        FeedReport {
            lines,
            out_of_scope: self.take_refused(),
            ..FeedReport::default()
        }
    }

    /// Points refused so far, per site.
    pub fn refused(&self) -> &BTreeMap<String, usize> {
        &self.refused
    }

    /// Takes the refused counts.
    pub fn take_refused(&mut self) -> BTreeMap<String, usize> {
        std::mem::take(&mut self.refused)
    }
}

impl<'a, I: Iterator<Item = (usize, Item<'a>)>> Iterator for Scoped<'_, I> {
    type Item = (usize, Item<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        let (line, item) = self.inner.next()?;
        let Some(scope) = self.scope else {
            return Some((line, item));
        };
        let site = match &item {
            Item::Sample(sample) => Some(sample.location_id.as_ref()),
            Item::Unusable {
                location_id: Some(site),
                ..
            } => Some(site.as_ref()),
            _ => None,
        };
        match site {
            Some(site) if !scope.allows(site) => {
                match self.refused.get_mut(site) {
                    Some(count) => *count += 1,
                    None => {
                        self.refused.insert(site.to_owned(), 1);
                    }
                }
                Some((line, Item::Ignored(SITE_NOT_ALLOWED)))
            }
            _ => Some((line, item)),
        }
    }
}

impl<'a, I: Decoded<'a>> Decoded<'a> for Scoped<'_, I> {
    fn offset(&self) -> usize {
        self.inner.offset()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use os_credits_ingest::{Precision, lines};

    const BODY: &str = "project_vcpu_usage,location_id=8676,project_name=a value=1 1\n\
        project_vcpu_usage,location_id=8677,project_name=a value=1 1\n\
        broken\n\
        project_mb_usage,location_id=8677,project_name=b other=1 1\n";

    #[test]
    fn points_of_other_sites_are_ignored_and_counted() {
        let scope = Scope::from_text("exporter", "8676");
        let mut scoped = Scoped::new(
            lines(BODY.as_bytes(), Precision::Nanoseconds, 0),
            Some(&scope),
        );
        let items: Vec<_> = scoped.by_ref().collect();
        assert!(matches!(items[0].1, Item::Sample(_)));
        assert!(matches!(items[1].1, Item::Ignored(SITE_NOT_ALLOWED)));
        assert!(matches!(items[2].1, Item::Invalid(_)));
        // unusable (no field) at a refused site: refused, not reported as broken
        assert!(matches!(items[3].1, Item::Ignored(SITE_NOT_ALLOWED)));
        assert_eq!(scoped.refused(), &BTreeMap::from([("8677".to_owned(), 2)]));
    }

    #[test]
    fn refusals_count_every_line_and_the_refused_per_site() {
        let scope = Scope::from_text("exporter", "8677");
        let report = Scoped::new(
            lines(BODY.as_bytes(), Precision::Nanoseconds, 0),
            Some(&scope),
        )
        .refusals();
        assert_eq!(report.lines, 4);
        assert_eq!(
            report.out_of_scope,
            BTreeMap::from([("8676".to_owned(), 1)])
        );
        assert!(!report.nothing_allowed());
    }

    #[test]
    fn no_scope_passes_everything() {
        let mut scoped = Scoped::new(lines(BODY.as_bytes(), Precision::Nanoseconds, 0), None);
        assert_eq!(scoped.by_ref().count(), 4);
        assert!(scoped.refused().is_empty());
    }

    #[test]
    fn sites_round_trip_as_text() {
        let scope = Scope::from_text("w", " 8677, 8676 ,");
        assert_eq!(scope.sites_text(), "8676,8677");
        assert_eq!(Scope::from_text("w", &scope.sites_text()), scope);
    }
}
