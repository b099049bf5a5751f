//! ImageFsInfo: the disk use of the image store.

use std::sync::Arc;

use tonic::Status;
use vpod_proto::cri;

use crate::runtime::Runtime;
use crate::server::status;

pub(in crate::server) async fn image_fs_info(
    runtime: &Arc<Runtime>,
    _: cri::ImageFsInfoRequest,
) -> Result<cri::ImageFsInfoResponse, Status> {
    let usage = runtime
        .images()
        .fs_usage()
        .await
        .map_err(|e| status(e.into()))?;
    let timestamp = usage
        .timestamp
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
    let usage = cri::FilesystemUsage {
        timestamp,
        fs_id: Some(cri::FilesystemIdentifier {
            mountpoint: usage.mountpoint.display().to_string(),
        }),
        used_bytes: Some(cri::UInt64Value {
            value: usage.used_bytes,
        }),
        inodes_used: Some(cri::UInt64Value {
            value: usage.inodes_used,
        }),
    };
    Ok(cri::ImageFsInfoResponse {
        image_filesystems: vec![usage],
        container_filesystems: Vec::new(),
    })
}
