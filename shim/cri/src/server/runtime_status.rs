//! Status: whether the runtime is ready (its kernel, initrd and VMM are there) and whether
//! the pod network is (a CNI configuration whose plugins are all installed); verbose adds
//! the configuration.

use std::sync::Arc;

use vpod_proto::cri;

use crate::runtime::Runtime;

pub(super) fn status(runtime: &Arc<Runtime>, request: cri::StatusRequest) -> cri::StatusResponse {
    let assets = runtime.assets();
    let missing: Vec<String> = [&assets.kernel, &assets.initrd, &assets.vmm]
        .iter()
        .filter(|p| !p.exists())
        .map(|p| p.display().to_string())
        .collect();
    let runtime_ready = cri::RuntimeCondition {
        r#type: "RuntimeReady".into(),
        status: missing.is_empty(),
        reason: if missing.is_empty() {
            String::new()
        } else {
            "AssetsMissing".into()
        },
        message: if missing.is_empty() {
            String::new()
        } else {
            format!("missing: {}", missing.join(", "))
        },
    };
    let network = runtime.network_status();
    let network_ready = cri::RuntimeCondition {
        r#type: "NetworkReady".into(),
        status: network.is_ok(),
        reason: match network {
            Ok(()) => String::new(),
            Err(_) => "NetworkPluginNotReady".into(),
        },
        message: match network {
            Ok(()) => String::new(),
            Err(e) => format!("network plugin is not ready: {e}"),
        },
    };
    let info = if request.verbose {
        let config = serde_json::json!({
            "kernel": assets.kernel, "initrd": assets.initrd, "vmm": assets.vmm,
            "root": runtime.root(),
        });
        [("config".to_string(), config.to_string())].into()
    } else {
        Default::default()
    };
    cri::StatusResponse {
        status: Some(cri::RuntimeStatus {
            conditions: vec![runtime_ready, network_ready],
        }),
        info,
        runtime_handlers: vec![cri::RuntimeHandler {
            name: String::new(),
            features: Some(cri::RuntimeHandlerFeatures::default()),
        }],
        features: Some(cri::RuntimeFeatures::default()),
    }
}
