//! virtctl-like verbs: `kumo start|stop|restart VM`, `kumo pause|unpause vmi|vm NAME`. Each is one PUT to
//! KubeVirt's `subresources.kubevirt.io/v1` API, so they work against kumo or a real KubeVirt.

use anyhow::{bail, Context, Result};

/// PUTs `/apis/subresources.kubevirt.io/v1/namespaces/{ns}/{plural}/{name}/{verb}`.
pub async fn put_subresource(client: &kube::Client, ns: &str, plural: &str, name: &str, verb: &str) -> Result<()> {
    let url = format!("/apis/subresources.kubevirt.io/v1/namespaces/{ns}/{plural}/{name}/{verb}");
    let req = http::Request::put(&url).header("content-type", "application/json").body(b"{}".to_vec())?;
    match client.request_text(req).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) => bail!("{verb} {name}: {} ({})", e.message, e.reason),
        Err(e) => Err(e).with_context(|| format!("{verb} {name}: talking to the API server")),
    }
}

/// `vmi`/`vm` (and KubeVirt's long names) to a plural resource.
pub fn kind_plural(kind: &str) -> Result<&'static str> {
    Ok(match kind {
        "vmi" | "vmis" | "virtualmachineinstance" | "virtualmachineinstances" => "virtualmachineinstances",
        "vm" | "vms" | "virtualmachine" | "virtualmachines" => "virtualmachines",
        other => bail!("unknown kind {other:?}: use vm or vmi"),
    })
}
