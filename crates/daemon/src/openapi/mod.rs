//! The OpenAPI 3 document served at `/openapi.json`, generated from the wire types.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes;

mod constraints;

/// The served document: the derived one with the API's rules on it (see [`constraints`]).
pub fn document(host_region: &str, cluster: bool) -> serde_json::Value {
    let mut doc = match serde_json::to_value(ApiDoc::openapi()) {
        Ok(doc) => doc,
        Err(e) => {
            tracing::error!(error = %e, "cannot render the OpenAPI document");
            return serde_json::Value::Null;
        }
    };
    for place in constraints::constrain(&mut doc, host_region, cluster) {
        tracing::warn!(%place, "an OpenAPI rule found no place in the derived document");
    }
    doc
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        // Any authenticated request can be refused before its handler: 401 without a valid
        // token, 400 for a path or query that does not decode. Documented on every operation.
        let error = |what: &str| {
            utoipa::openapi::ResponseBuilder::new()
                .description(what)
                .content(
                    "application/json",
                    utoipa::openapi::ContentBuilder::new()
                        .schema(Some(utoipa::openapi::Ref::from_schema_name(
                            "ErrorResponse",
                        )))
                        .build(),
                )
                .build()
        };
        for item in openapi.paths.paths.values_mut() {
            let ops = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for op in ops.into_iter().flatten() {
                let responses = &mut op.responses.responses;
                responses
                    .entry("400".into())
                    .or_insert_with(|| error("malformed request").into());
                responses
                    .entry("401".into())
                    .or_insert_with(|| error("missing or invalid token").into());
            }
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Hangar Machines API",
        description = "The Fly Machines REST API (v1) as served by Hangar."
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    paths(
        routes::list_apps,
        routes::platform_regions,
        routes::create_app,
        routes::get_app,
        routes::delete_app,
        routes::list_machines,
        routes::create_machine,
        routes::get_machine,
        routes::update_machine,
        routes::destroy_machine,
        routes::start_machine,
        routes::stop_machine,
        routes::restart_machine,
        routes::signal_machine,
        routes::suspend_machine,
        routes::exec_machine,
        routes::machine_ps,
        routes::get_memory,
        routes::set_memory,
        routes::reclaim_memory,
        routes::cordon_machine,
        routes::uncordon_machine,
        routes::wait_machine,
        routes::machine_events,
        routes::machine_versions,
        routes::get_lease,
        routes::acquire_lease,
        routes::release_lease,
        routes::get_metadata,
        routes::patch_metadata,
        routes::put_metadata,
        routes::get_metadata_key,
        routes::set_metadata_key,
        routes::delete_metadata_key,
        routes::list_secrets,
        routes::set_secrets,
        routes::get_secret,
        routes::set_secret,
        routes::delete_secret,
        routes::list_ip_assignments,
        routes::assign_ip,
        routes::release_ip,
        routes::list_certificates,
        routes::import_certificate,
        routes::acme_certificate,
        routes::get_certificate,
        routes::check_certificate,
        routes::delete_certificate,
        routes::delete_custom_certificate,
        routes::delete_acme_certificate,
        routes::list_volumes,
        routes::create_volume,
        routes::get_volume,
        routes::update_volume,
        routes::destroy_volume,
        routes::extend_volume,
        routes::list_snapshots,
        routes::create_snapshot,
    )
)]
pub struct ApiDoc;
