//! Decides what a request gets: the route of its path, whether the caller may use it, and which
//! instances the reply describes. No I/O, so every rule is tested without root.

use std::net::IpAddr;

use colex_proto as proto;

use super::directory::Directory;

/// HTTP status codes the service replies with.
pub mod status {
    pub const OK: u16 = 200;
    pub const FORBIDDEN: u16 = 403;
    pub const NOT_FOUND: u16 = 404;
    pub const METHOD_NOT_ALLOWED: u16 = 405;
    pub const SERVICE_UNAVAILABLE: u16 = 503;
}

/// The grant a caller needs for another silo's metadata, as the silo spec spells it.
pub const QUERY_SILOS_GRANT: &str = "grants.query_silos";

/// A path the service serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/` or `/self`: the caller's own metadata.
    Own,
    /// `/list`: every running instance of the cluster.
    List,
    /// `/silos/NAME`: every running instance of silo NAME.
    Silo { name: String },
    /// `/silos/NAME/INDEX`: one instance.
    Instance { name: String, index: u32 },
}

/// A request that gets an error reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub status: u16,
    pub message: String,
}

impl Failure {
    fn new(status: u16, message: impl Into<String>) -> Self {
        Failure {
            status,
            message: message.into(),
        }
    }
}

/// The content of the reply to an allowed request.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// The caller itself.
    Own(proto::SiloName),
    /// Every running instance, in the short form of the list.
    List(Vec<proto::SiloName>),
    /// Instances of another silo, with their network counters: all of a silo's for
    /// `/silos/NAME`, one for `/silos/NAME/INDEX`.
    Others { instances: Vec<proto::SiloName>, single: bool },
}

/// The silo of this host that sent a request, found by its source address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub silo_id: String,
}

/// Returns the route of `method` and `path`. Only GET and HEAD are served, and one trailing
/// slash is ignored.
pub fn route(method: &str, path: &str) -> Result<Route, Failure> {
    if method != "GET" && method != "HEAD" {
        return Err(Failure::new(status::METHOD_NOT_ALLOWED, format!("method {method} is not allowed; use GET")));
    }
    let mut segments: Vec<&str> = path.split('/').skip(1).collect();
    // "/self/" names "/self", but "//" stays an unknown path.
    if let [.., before, last] = segments.as_slice() {
        if last.is_empty() && !before.is_empty() {
            segments.pop();
        }
    }
    match segments.as_slice() {
        [""] | ["self"] => Ok(Route::Own),
        ["list"] => Ok(Route::List),
        ["silos", name] if !name.is_empty() => Ok(Route::Silo { name: (*name).to_owned() }),
        ["silos", name, index] if !name.is_empty() => match index.parse::<u32>() {
            Ok(index) => Ok(Route::Instance {
                name: (*name).to_owned(),
                index,
            }),
            Err(_) => Err(not_found_path(path)),
        },
        _ => Err(not_found_path(path)),
    }
}

fn not_found_path(path: &str) -> Failure {
    Failure::new(
        status::NOT_FOUND,
        format!("no such path {path:?}; use /self, /list, /silos/NAME or /silos/NAME/INDEX"),
    )
}

/// Decides the reply content for `route` and a request from `source`, sent by `caller` when `source` is
/// the address of a running silo of this host. The caller must be in `directory` too, because
/// its name and grant come from the controller's list.
pub fn answer(route: &Route, source: IpAddr, caller: Option<&Caller>, directory: &Directory) -> Result<Answer, Failure> {
    let Some(caller) = caller else {
        return Err(Failure::new(
            status::FORBIDDEN,
            format!("source address {source} is not a running silo of this host"),
        ));
    };
    let Some(own) = directory.by_id(&caller.silo_id) else {
        return Err(Failure::new(
            status::SERVICE_UNAVAILABLE,
            format!("silo {} is not in the controller's list of running silos yet; retry in a second", caller.silo_id),
        ));
    };
    match route {
        Route::Own => Ok(Answer::Own(own.clone())),
        Route::List => Ok(Answer::List(directory.instances().to_vec())),
        Route::Silo { .. } | Route::Instance { .. } if !own.query_silos => Err(Failure::new(
            status::FORBIDDEN,
            format!("silo {} lacks the grant {QUERY_SILOS_GRANT}, which other silos' metadata requires", own.silo),
        )),
        Route::Silo { name } => {
            let instances: Vec<proto::SiloName> = directory.by_name(name).into_iter().cloned().collect();
            if instances.is_empty() {
                return Err(Failure::new(status::NOT_FOUND, format!("silo {name} has no running instance")));
            }
            Ok(Answer::Others { instances, single: false })
        }
        Route::Instance { name, index } => match directory.by_name_and_index(name, *index) {
            Some(instance) => Ok(Answer::Others {
                instances: vec![instance.clone()],
                single: true,
            }),
            None => Err(Failure::new(
                status::NOT_FOUND,
                format!("silo {name} has no running instance {index}"),
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOURCE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 69, 1, 2));

    fn instance(silo: &str, index: u32, id: &str, query_silos: bool) -> proto::SiloName {
        proto::SiloName {
            silo: silo.to_owned(),
            index,
            id: id.to_owned(),
            host: "h1".to_owned(),
            addresses: vec!["10.69.1.2".to_owned()],
            query_silos,
            ..Default::default()
        }
    }

    fn directory() -> Directory {
        let mut directory = Directory::default();
        directory.set_names(&proto::Names {
            names: vec![
                instance("admin", 0, "0000000a", true),
                instance("web", 0, "0000000b", false),
                instance("web", 1, "0000000c", false),
            ],
        });
        directory
    }

    fn caller(silo_id: &str) -> Caller {
        Caller {
            silo_id: silo_id.to_owned(),
        }
    }

    #[test]
    fn routes_of_paths() {
        assert_eq!(route("GET", "/"), Ok(Route::Own));
        assert_eq!(route("GET", "/self"), Ok(Route::Own));
        assert_eq!(route("GET", "/self/"), Ok(Route::Own));
        assert_eq!(route("HEAD", "/list"), Ok(Route::List));
        assert_eq!(route("GET", "/silos/web"), Ok(Route::Silo { name: "web".to_owned() }));
        assert_eq!(
            route("GET", "/silos/web/1"),
            Ok(Route::Instance {
                name: "web".to_owned(),
                index: 1
            })
        );
    }

    #[test]
    fn unknown_paths_are_not_found() {
        for path in ["/nope", "/silos", "/silos/", "/silos/web/x", "/silos/web/1/2", "//", "/list/more"] {
            let failure = route("GET", path).expect_err(path);
            assert_eq!(failure.status, status::NOT_FOUND, "{path}");
        }
    }

    #[test]
    fn other_methods_are_not_allowed() {
        let failure = route("POST", "/self").expect_err("POST rejected");
        assert_eq!(failure.status, status::METHOD_NOT_ALLOWED);
    }

    #[test]
    fn unknown_source_is_forbidden() {
        let failure = answer(&Route::Own, SOURCE, None, &directory()).expect_err("no caller");
        assert_eq!(failure.status, status::FORBIDDEN);
        assert!(failure.message.contains("10.69.1.2"), "{}", failure.message);
    }

    #[test]
    fn unlisted_caller_must_retry() {
        let failure = answer(&Route::Own, SOURCE, Some(&caller("0000000f")), &directory()).expect_err("unlisted");
        assert_eq!(failure.status, status::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn own_and_list_need_no_grant() {
        let directory = directory();
        let own = answer(&Route::Own, SOURCE, Some(&caller("0000000b")), &directory).expect("own metadata");
        assert!(matches!(own, Answer::Own(ref instance) if instance.id == "0000000b"), "{own:?}");
        let list = answer(&Route::List, SOURCE, Some(&caller("0000000b")), &directory).expect("list");
        assert!(matches!(list, Answer::List(ref instances) if instances.len() == 3), "{list:?}");
    }

    #[test]
    fn other_silo_needs_grant() {
        let route = Route::Instance {
            name: "admin".to_owned(),
            index: 0,
        };
        let failure = answer(&route, SOURCE, Some(&caller("0000000b")), &directory()).expect_err("no grant");
        assert_eq!(failure.status, status::FORBIDDEN);
        assert!(failure.message.contains(QUERY_SILOS_GRANT), "{}", failure.message);
    }

    #[test]
    fn granted_caller_gets_other_silos() {
        let directory = directory();
        let granted = caller("0000000a");
        let all = answer(&Route::Silo { name: "web".to_owned() }, SOURCE, Some(&granted), &directory).expect("web");
        assert!(matches!(all, Answer::Others { ref instances, single: false } if instances.len() == 2), "{all:?}");
        let one = Route::Instance {
            name: "web".to_owned(),
            index: 1,
        };
        let one = answer(&one, SOURCE, Some(&granted), &directory).expect("web 1");
        assert!(
            matches!(one, Answer::Others { ref instances, single: true } if instances[0].id == "0000000c"),
            "{one:?}"
        );
    }

    #[test]
    fn granted_caller_gets_404_for_unknown_silo() {
        let directory = directory();
        let granted = caller("0000000a");
        let failure = answer(&Route::Silo { name: "db".to_owned() }, SOURCE, Some(&granted), &directory).expect_err("db");
        assert_eq!(failure.status, status::NOT_FOUND);
        let missing = Route::Instance {
            name: "web".to_owned(),
            index: 5,
        };
        let failure = answer(&missing, SOURCE, Some(&granted), &directory).expect_err("web 5");
        assert_eq!(failure.status, status::NOT_FOUND);
    }
}
