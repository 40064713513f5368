//! Growing a volume's image to a claim's new size: through the running guest's QEMU (`block_resize`, so the
//! guest sees the new size at once) when a guest on this node has it open, else with `qemu-img resize`.

use crate::agent::Agent;
use serde_json::{json, Value};
use std::path::Path;

/// Grows `image` to `bytes`; says how.
pub(crate) async fn grow(agent: &Agent, image: &Path, bytes: u64) -> Result<&'static str, String> {
    let path = image.to_str().ok_or_else(|| format!("{} is not valid UTF-8", image.display()))?;
    if let Some((vm, node)) = running_node(agent, path).await {
        let args = json!({"node-name": node, "size": bytes});
        vm.qmp()?.execute("block_resize", Some(args)).await.map_err(|e| format!("block_resize of {path}: {e}"))?;
        return Ok("in the running guest (block_resize)");
    }
    let info = crate::image::image_info(image).await.map_err(|e| format!("{e:#}"))?;
    if info.virtual_size >= bytes {
        return Ok("already that size");
    }
    let out = tokio::process::Command::new("qemu-img")
        .args(["resize", "-q", "-f", &info.format, path, &bytes.to_string()])
        .output()
        .await
        .map_err(|e| format!("running qemu-img (install qemu-utils): {e}"))?;
    if !out.status.success() {
        // e.g. the image is open in a guest on another node (a shared volume): tried again later.
        return Err(format!("qemu-img resize {path}: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok("offline (qemu-img resize)")
}

/// A guest on this node that has the image at `path` open, and its format node for it.
pub(crate) async fn running_node(agent: &Agent, path: &str) -> Option<(std::sync::Arc<crate::agent::LocalVm>, String)> {
    let running: Vec<_> = agent.vms.lock().await.values().cloned().collect();
    for vm in running {
        let Ok(qmp) = vm.qmp() else { continue };
        let Ok(nodes) = qmp.execute("query-named-block-nodes", None).await else { continue };
        if let Some(node) = format_node_of(&nodes, path) {
            return Some((vm, node));
        }
    }
    None
}

/// The format node (qcow2 or raw, not the protocol node under it) whose file is `path`.
fn format_node_of(nodes: &Value, path: &str) -> Option<String> {
    nodes.as_array()?.iter().find_map(|n| {
        let format = matches!(n.get("drv")?.as_str()?, "qcow2" | "raw");
        let named = n.get("file")?.as_str()? == path;
        (format && named).then(|| n.get("node-name")?.as_str().map(str::to_string)).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_format_node_of_an_image_is_found() {
        let nodes = json!([
            {"node-name": "disk0-file", "drv": "file", "file": "/v/pvc-1/disk.qcow2"},
            {"node-name": "disk0", "drv": "qcow2", "file": "/v/pvc-1/disk.qcow2"},
            {"node-name": "disk1", "drv": "raw", "file": "/v/pvc-2/disk.raw"},
        ]);
        assert_eq!(format_node_of(&nodes, "/v/pvc-1/disk.qcow2").as_deref(), Some("disk0"));
        assert_eq!(format_node_of(&nodes, "/v/pvc-2/disk.raw").as_deref(), Some("disk1"));
        assert_eq!(format_node_of(&nodes, "/v/other"), None);
    }
}
