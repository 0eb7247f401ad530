//! The OpenAPI 3 document served at `/openapi.json`, generated from the wire types.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
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
    )
)]
pub struct ApiDoc;
