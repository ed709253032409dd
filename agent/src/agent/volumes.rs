//! From a pod volume to the host directory the kubelet keeps it in.
//!
//! The kubelet mounts every volume of a pod below
//! `<kubelet-root>/pods/<pod-uid>/volumes/<plugin>/<name>`, with `/` in the
//! plugin name written as `~`:
//!
//! | volume                         | directory below `pods/<uid>/volumes/`      |
//! |--------------------------------|--------------------------------------------|
//! | emptyDir                       | `kubernetes.io~empty-dir/<volume>`         |
//! | PVC on a CSI volume            | `kubernetes.io~csi/<pv>/mount`             |
//! | PVC on an in-tree or local PV  | `kubernetes.io~<plugin>/<pv>`              |
//! | PVC on a hostPath PV           | the PV's path, under `--host-root`         |
//! | hostPath                       | the path, under `--host-root`, if allowed  |
//!
//! Generic ephemeral volumes are PVCs named `<pod>-<volume>`. configMap,
//! secret, projected and downward-API volumes are refused: they are
//! generated from API objects, which are backed up as objects, not files.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{PersistentVolume, Pod, Volume};

/// What a pod volume is, as far as finding its data goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeKind {
    /// An emptyDir, kept by the kubelet under the pod.
    EmptyDir,
    /// Backed by this PersistentVolumeClaim (including generic ephemeral
    /// volumes).
    Claim(String),
    /// A directory of the host.
    HostPath(String),
}

/// The kind of the volume named `volume` in `pod`, or why it cannot be
/// backed up or restored.
pub fn classify(pod: &Pod, volume: &str) -> Result<VolumeKind, String> {
    let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
    let v: &Volume = pod
        .spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .find(|v| v.name == volume)
        .ok_or_else(|| format!("pod {pod_name} has no volume named {volume:?}"))?;
    if v.empty_dir.is_some() {
        return Ok(VolumeKind::EmptyDir);
    }
    if let Some(c) = &v.persistent_volume_claim {
        return Ok(VolumeKind::Claim(c.claim_name.clone()));
    }
    if v.ephemeral.is_some() {
        return Ok(VolumeKind::Claim(format!("{pod_name}-{volume}")));
    }
    if let Some(h) = &v.host_path {
        return Ok(VolumeKind::HostPath(h.path.clone()));
    }
    let generated = [
        (v.config_map.is_some(), "configMap"),
        (v.secret.is_some(), "secret"),
        (v.projected.is_some(), "projected"),
        (v.downward_api.is_some(), "downwardAPI"),
    ];
    if let Some((_, kind)) = generated.iter().find(|(is, _)| *is) {
        return Err(format!(
            "volume {volume:?} is a {kind} volume: its content comes from API objects, \
             which are backed up as objects, not as files; it is not backed up"
        ));
    }
    Err(format!(
        "volume {volume:?} has a source the agent cannot read through the kubelet's \
         directories (only emptyDir, persistentVolumeClaim, ephemeral and hostPath are supported)"
    ))
}

/// The directory of an emptyDir volume.
pub fn empty_dir(kubelet_root: &Path, pod_uid: &str, volume: &str) -> PathBuf {
    pod_volumes(kubelet_root, pod_uid)
        .join("kubernetes.io~empty-dir")
        .join(volume)
}

fn pod_volumes(kubelet_root: &Path, pod_uid: &str) -> PathBuf {
    kubelet_root.join("pods").join(pod_uid).join("volumes")
}

/// Where the data of a PersistentVolume mounted by the pod lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PvLocation {
    /// Below the pod's volume directory in the kubelet root.
    Kubelet(PathBuf),
    /// A host path (a hostPath PersistentVolume), to read under the host root.
    Host(String),
}

/// The directory the kubelet mounts PersistentVolume `pv` at for the pod.
pub fn pv_dir(
    kubelet_root: &Path,
    pod_uid: &str,
    pv: &PersistentVolume,
) -> Result<PvLocation, String> {
    let name = pv.metadata.name.as_deref().unwrap_or_default();
    let spec = pv
        .spec
        .as_ref()
        .ok_or_else(|| format!("PersistentVolume {name} has no spec"))?;
    let base = pod_volumes(kubelet_root, pod_uid);
    if spec.csi.is_some() {
        return Ok(PvLocation::Kubelet(
            base.join("kubernetes.io~csi").join(name).join("mount"),
        ));
    }
    if let Some(h) = &spec.host_path {
        return Ok(PvLocation::Host(h.path.clone()));
    }
    if let Some(f) = &spec.flex_volume {
        return Ok(PvLocation::Kubelet(
            base.join(f.driver.replace('/', "~")).join(name),
        ));
    }
    let plugin = [
        (spec.local.is_some(), "local-volume"),
        (spec.nfs.is_some(), "nfs"),
        (spec.aws_elastic_block_store.is_some(), "aws-ebs"),
        (spec.gce_persistent_disk.is_some(), "gce-pd"),
        (spec.azure_disk.is_some(), "azure-disk"),
        (spec.azure_file.is_some(), "azure-file"),
        (spec.cephfs.is_some(), "cephfs"),
        (spec.rbd.is_some(), "rbd"),
        (spec.iscsi.is_some(), "iscsi"),
        (spec.fc.is_some(), "fc"),
        (spec.cinder.is_some(), "cinder"),
        (spec.glusterfs.is_some(), "glusterfs"),
        (spec.vsphere_volume.is_some(), "vsphere-volume"),
        (spec.portworx_volume.is_some(), "portworx-volume"),
    ]
    .into_iter()
    .find_map(|(is, p)| is.then_some(p))
    .ok_or_else(|| {
        format!("PersistentVolume {name} has a volume source the agent does not know")
    })?;
    Ok(PvLocation::Kubelet(
        base.join(format!("kubernetes.io~{plugin}")).join(name),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        CSIPersistentVolumeSource, ConfigMapVolumeSource, EphemeralVolumeSource,
        HostPathVolumeSource, LocalVolumeSource, NFSVolumeSource,
        PersistentVolumeClaimVolumeSource, PersistentVolumeSpec, PodSpec,
    };

    fn pod(volumes: Vec<Volume>) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some("db-0".into());
        p.spec = Some(PodSpec {
            volumes: Some(volumes),
            ..PodSpec::default()
        });
        p
    }

    fn vol(name: &str, f: impl FnOnce(&mut Volume)) -> Volume {
        let mut v = Volume {
            name: name.into(),
            ..Volume::default()
        };
        f(&mut v);
        v
    }

    #[test]
    fn volume_kinds() {
        let p = pod(vec![
            vol("cache", |v| v.empty_dir = Some(Default::default())),
            vol("data", |v| {
                v.persistent_volume_claim = Some(PersistentVolumeClaimVolumeSource {
                    claim_name: "db-data".into(),
                    ..Default::default()
                })
            }),
            vol("scratch", |v| {
                v.ephemeral = Some(EphemeralVolumeSource::default())
            }),
            vol("logs", |v| {
                v.host_path = Some(HostPathVolumeSource {
                    path: "/var/log/app".into(),
                    ..Default::default()
                })
            }),
            vol("conf", |v| {
                v.config_map = Some(ConfigMapVolumeSource::default())
            }),
            vol("odd", |_| {}),
        ]);
        assert_eq!(classify(&p, "cache"), Ok(VolumeKind::EmptyDir));
        assert_eq!(
            classify(&p, "data"),
            Ok(VolumeKind::Claim("db-data".into()))
        );
        assert_eq!(
            classify(&p, "scratch"),
            Ok(VolumeKind::Claim("db-0-scratch".into()))
        );
        assert_eq!(
            classify(&p, "logs"),
            Ok(VolumeKind::HostPath("/var/log/app".into()))
        );
        let conf = classify(&p, "conf").unwrap_err();
        assert!(conf.contains("configMap volume"), "{conf}");
        assert!(classify(&p, "odd").unwrap_err().contains("cannot read"));
        assert!(classify(&p, "nope")
            .unwrap_err()
            .contains("no volume named"));
    }

    fn pv(name: &str, f: impl FnOnce(&mut PersistentVolumeSpec)) -> PersistentVolume {
        let mut spec = PersistentVolumeSpec::default();
        f(&mut spec);
        let mut pv = PersistentVolume {
            spec: Some(spec),
            ..Default::default()
        };
        pv.metadata.name = Some(name.into());
        pv
    }

    #[test]
    fn kubelet_directories() {
        let root = Path::new("/var/lib/kubelet");
        assert_eq!(
            empty_dir(root, "u1", "cache"),
            Path::new("/var/lib/kubelet/pods/u1/volumes/kubernetes.io~empty-dir/cache")
        );
        let csi = pv("pvc-123", |s| {
            s.csi = Some(CSIPersistentVolumeSource::default())
        });
        assert_eq!(
            pv_dir(root, "u1", &csi),
            Ok(PvLocation::Kubelet(
                "/var/lib/kubelet/pods/u1/volumes/kubernetes.io~csi/pvc-123/mount".into()
            ))
        );
        let local = pv("local-1", |s| s.local = Some(LocalVolumeSource::default()));
        assert_eq!(
            pv_dir(root, "u1", &local),
            Ok(PvLocation::Kubelet(
                "/var/lib/kubelet/pods/u1/volumes/kubernetes.io~local-volume/local-1".into()
            ))
        );
        let nfs = pv("nfs-1", |s| s.nfs = Some(NFSVolumeSource::default()));
        assert_eq!(
            pv_dir(root, "u1", &nfs),
            Ok(PvLocation::Kubelet(
                "/var/lib/kubelet/pods/u1/volumes/kubernetes.io~nfs/nfs-1".into()
            ))
        );
        let hp = pv("hp", |s| {
            s.host_path = Some(HostPathVolumeSource {
                path: "/srv/data".into(),
                ..Default::default()
            })
        });
        assert_eq!(
            pv_dir(root, "u1", &hp),
            Ok(PvLocation::Host("/srv/data".into()))
        );
        assert!(pv_dir(root, "u1", &pv("x", |_| {})).is_err());
    }
}
