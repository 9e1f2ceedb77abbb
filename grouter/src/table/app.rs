//! Who serves a route: an app as its registrations name it, in one allocation.
//!
//! Owns: [`App`], the app GUID with the route-emitter tags `app_name`, `organization_name`
//! and `space_name` and the endpoint's `isolation_segment`, packed into one string, and
//! the app's identity across foundations ([`App::identity`]). One `Arc<App>` is shared by
//! every endpoint and route entry of the app (the learner interns it; an import shares it
//! within a frame), so carrying the tags costs nothing per endpoint or per route.
//!
//! Must never: tell an absent tag from an empty one (route-emitter sends `""` for unknown
//! values; both are absent here and on the wire), or hold a field longer than
//! [`App::MAX_FIELD`].

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

/// An app: GUID, name, organisation, space and isolation segment.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct App {
    /// The five fields one after the other.
    text: Box<str>,
    /// Where the GUID, name, organisation and space end in `text` (the segment ends at
    /// its end). `u16` suffices: every field is at most [`App::MAX_FIELD`] bytes.
    ends: [u16; 4],
}

/// The fields of an [`App`], borrowed; `None` and `Some("")` are the same.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppFields<'a> {
    /// The app GUID at its foundation (`""` when the emitter sent none).
    pub id: &'a str,
    /// The `app_name` tag.
    pub name: Option<&'a str>,
    /// The `organization_name` tag.
    pub org: Option<&'a str>,
    /// The `space_name` tag.
    pub space: Option<&'a str>,
    /// The `isolation_segment`: the endpoint is served by that segment's GoRouters.
    pub segment: Option<&'a str>,
}

/// An empty tag is an absent one.
fn tag(v: Option<&str>) -> Option<&str> {
    v.filter(|s| !s.is_empty())
}

/// A field is longer than [`App::MAX_FIELD`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("app field longer than {} bytes", App::MAX_FIELD)]
pub struct FieldTooLong;

impl App {
    /// The longest field, in bytes (Cloud Foundry's names are at most 255 characters).
    pub const MAX_FIELD: usize = 4096;

    /// An app with only a GUID (an emitter that sends no tags).
    pub fn with_id(id: &str) -> App {
        App::new(AppFields {
            id,
            ..AppFields::default()
        })
        .unwrap_or_default()
    }

    /// Pack `fields`; a field beyond [`App::MAX_FIELD`] is refused, never cut (a cut value
    /// would be another app, and would not match the owner's seal).
    pub fn new(f: AppFields<'_>) -> Result<App, FieldTooLong> {
        let parts = [
            f.id,
            f.name.unwrap_or(""),
            f.org.unwrap_or(""),
            f.space.unwrap_or(""),
            f.segment.unwrap_or(""),
        ];
        if parts.iter().any(|p| p.len() > App::MAX_FIELD) {
            return Err(FieldTooLong);
        }
        let mut text = String::with_capacity(parts.iter().map(|p| p.len()).sum());
        let mut ends = [0u16; 4];
        for (i, p) in parts.iter().enumerate() {
            text.push_str(p);
            if let Some(end) = ends.get_mut(i) {
                // At most 4 × MAX_FIELD bytes so far: fits.
                *end = u16::try_from(text.len()).map_err(|_| FieldTooLong)?;
            }
        }
        Ok(App {
            text: text.into_boxed_str(),
            ends,
        })
    }

    fn field(&self, i: usize) -> &str {
        let start = if i == 0 {
            0
        } else {
            usize::from(self.ends[i - 1])
        };
        let end = self
            .ends
            .get(i)
            .map_or(self.text.len(), |e| usize::from(*e));
        self.text.get(start..end).unwrap_or("")
    }

    fn tag(&self, i: usize) -> Option<&str> {
        Some(self.field(i)).filter(|s| !s.is_empty())
    }

    /// The app GUID at its foundation.
    pub fn id(&self) -> &str {
        self.field(0)
    }

    /// The `app_name` tag.
    pub fn name(&self) -> Option<&str> {
        self.tag(1)
    }

    /// The `organization_name` tag.
    pub fn org(&self) -> Option<&str> {
        self.tag(2)
    }

    /// The `space_name` tag.
    pub fn space(&self) -> Option<&str> {
        self.tag(3)
    }

    /// The isolation segment, `None` for the shared GoRouters.
    pub fn segment(&self) -> Option<&str> {
        self.tag(4)
    }

    /// Every field, borrowed.
    pub fn fields(&self) -> AppFields<'_> {
        AppFields {
            id: self.id(),
            name: self.name(),
            org: self.org(),
            space: self.space(),
            segment: self.segment(),
        }
    }

    /// Whether this app has exactly `f`'s fields (an interner's check).
    pub fn is(&self, f: &AppFields<'_>) -> bool {
        self.id() == f.id
            && self.name() == tag(f.name)
            && self.org() == tag(f.org)
            && self.space() == tag(f.space)
            && self.segment() == tag(f.segment)
    }

    /// The app's identity across foundations: `(org, space, name)` when route-emitter
    /// tagged all three (the same app has another GUID at every site, but the same org,
    /// space and name), else `None` (the GUID is all there is).
    pub fn identity(&self) -> Option<(&str, &str, &str)> {
        Some((self.org()?, self.space()?, self.name()?))
    }
}

impl fmt::Debug for App {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("App")
            .field("id", &self.id())
            .field("name", &self.name())
            .field("org", &self.org())
            .field("space", &self.space())
            .field("segment", &self.segment())
            .finish()
    }
}

/// One record per app GUID, so that equal apps share one allocation: the learner's for
/// its endpoints (and so its route entries), an import's for one frame's entries.
#[derive(Debug, Default)]
pub struct AppInterner {
    apps: HashSet<ById, foldhash::fast::RandomState>,
}

impl AppInterner {
    /// The shared record of `fields`: the one held when its fields are the same, else a
    /// new one that replaces it (a renamed app: what already holds the old one keeps it).
    pub fn intern(&mut self, fields: AppFields<'_>) -> Result<Arc<App>, FieldTooLong> {
        if let Some(app) = self.apps.get(fields.id)
            && app.0.is(&fields)
        {
            return Ok(app.0.clone());
        }
        let app = Arc::new(App::new(fields)?);
        self.apps.replace(ById(app.clone()));
        Ok(app)
    }

    /// Forget the records nothing else holds.
    pub fn collect(&mut self) {
        self.apps.retain(|a| Arc::strong_count(&a.0) > 1);
    }

    /// Whether it holds no record.
    pub fn is_empty(&self) -> bool {
        self.apps.is_empty()
    }
}

/// An interned app, found by its GUID (so the set needs no key of its own).
#[derive(Debug)]
struct ById(Arc<App>);

impl PartialEq for ById {
    fn eq(&self, other: &ById) -> bool {
        self.0.id() == other.0.id()
    }
}

impl Eq for ById {}

impl std::hash::Hash for ById {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        // As `str` hashes, so that `Borrow<str>` finds it.
        self.0.id().hash(h);
    }
}

impl std::borrow::Borrow<str> for ById {
    fn borrow(&self) -> &str {
        self.0.id()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_and_empty_is_absent() {
        let f = AppFields {
            id: "5e1c",
            name: Some("shop"),
            org: Some("acme"),
            space: Some(""),
            segment: Some("seg-a"),
        };
        let a = App::new(f).unwrap();
        assert_eq!(a.id(), "5e1c");
        assert_eq!(a.name(), Some("shop"));
        assert_eq!(a.org(), Some("acme"));
        assert_eq!(a.space(), None);
        assert_eq!(a.segment(), Some("seg-a"));
        assert!(a.is(&f));
        assert!(a.is(&AppFields { space: None, ..f }));
        assert!(!a.is(&AppFields { org: None, ..f }));
        assert_eq!(a.identity(), None, "no space: no identity");
        let full = App::new(AppFields {
            space: Some("prod"),
            ..f
        })
        .unwrap();
        assert_eq!(full.identity(), Some(("acme", "prod", "shop")));
        assert_eq!(
            App::with_id("g").fields(),
            AppFields {
                id: "g",
                ..AppFields::default()
            }
        );
        // One allocation of the five fields, whatever they hold.
        assert_eq!(std::mem::size_of::<App>(), 24);
    }

    #[test]
    fn the_interner_shares_equal_apps_and_replaces_changed_ones() {
        let mut i = AppInterner::default();
        let shop = AppFields {
            id: "g",
            name: Some("shop"),
            ..AppFields::default()
        };
        let a = i.intern(shop).unwrap();
        assert!(Arc::ptr_eq(&a, &i.intern(shop).unwrap()));
        let renamed = i
            .intern(AppFields {
                name: Some("store"),
                ..shop
            })
            .unwrap();
        assert_eq!(renamed.name(), Some("store"));
        assert_eq!(a.name(), Some("shop"), "holders of the old record keep it");
        drop(a);
        i.collect();
        assert!(!i.is_empty());
        drop(renamed);
        i.collect();
        assert!(i.is_empty());
    }

    #[test]
    fn a_field_too_long_is_refused() {
        let long = "x".repeat(App::MAX_FIELD + 1);
        assert_eq!(
            App::new(AppFields {
                id: "g",
                segment: Some(&long),
                ..AppFields::default()
            }),
            Err(FieldTooLong)
        );
        let max = "x".repeat(App::MAX_FIELD);
        let a = App::new(AppFields {
            id: &max,
            name: Some(&max),
            org: Some(&max),
            space: Some(&max),
            segment: Some(&max),
        })
        .unwrap();
        assert_eq!(a.segment().map(str::len), Some(App::MAX_FIELD));
    }
}
