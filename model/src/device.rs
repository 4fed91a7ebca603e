//! Choosing where to train. burn 0.22 picks the backend at run time through the `Device`;
//! `Device::default()` would silently prefer wgpu whenever it is compiled in, so the choice is
//! always explicit here.

use burn::tensor::{Device, DeviceKind};

use crate::ModelError;

/// `--device auto|gpu|cpu`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    /// The GPU if wgpu finds an adapter, else the CPU (with a warning).
    Auto,
    /// The GPU or an error.
    Gpu,
    /// The pure-Rust CPU backend (flex).
    Cpu,
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "gpu" => Ok(Self::Gpu),
            "cpu" => Ok(Self::Cpu),
            other => Err(format!("unknown device {other:?}: use auto, gpu or cpu")),
        }
    }
}

/// The device to compute on (without autodiff; training calls `.autodiff()` on it).
pub fn select(choice: DeviceChoice) -> Result<Device, ModelError> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::flex()),
        DeviceChoice::Gpu => Device::wgpu_options().init().map_err(|e| ModelError::NoGpu(e.to_string())),
        // A real GPU only: a software Vulkan adapter (Mesa's lavapipe) is ~100× slower than
        // flex, so `auto` passes it over; `gpu` takes whatever adapter wgpu finds.
        DeviceChoice::Auto => {
            for kind in [DeviceKind::DiscreteGpu(0), DeviceKind::IntegratedGpu(0)] {
                if let Ok(d) = Device::wgpu_options().device_kind(kind).init() {
                    return Ok(d);
                }
            }
            tracing::warn!("no GPU adapter; training on the CPU (flex)");
            Ok(Device::flex())
        }
    }
}

/// A short name for reports: "wgpu" or "flex".
pub fn name(device: &Device) -> &'static str {
    if *device == Device::flex() { "flex" } else { "wgpu" }
}
