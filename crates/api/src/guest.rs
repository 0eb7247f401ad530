//! Guest sizing: Fly's presets (`shared-cpu-1x` …) and the limits on cpus and memory.

use crate::config::MachineGuest;

pub struct Preset {
    pub name: &'static str,
    pub cpu_kind: &'static str,
    pub cpus: i64,
    pub memory_mb: i64,
    pub gpu_kind: Option<&'static str>,
}

const fn preset(name: &'static str, cpu_kind: &'static str, cpus: i64, memory_mb: i64) -> Preset {
    Preset {
        name,
        cpu_kind,
        cpus,
        memory_mb,
        gpu_kind: None,
    }
}

const fn gpu(name: &'static str, gpu_kind: &'static str) -> Preset {
    Preset {
        name,
        cpu_kind: "performance",
        cpus: 8,
        memory_mb: 32768,
        gpu_kind: Some(gpu_kind),
    }
}

pub const PRESETS: &[Preset] = &[
    preset("shared-cpu-1x", "shared", 1, 256),
    preset("shared-cpu-2x", "shared", 2, 512),
    preset("shared-cpu-4x", "shared", 4, 1024),
    preset("shared-cpu-6x", "shared", 6, 1536),
    preset("shared-cpu-8x", "shared", 8, 2048),
    preset("performance-1x", "performance", 1, 2048),
    preset("performance-2x", "performance", 2, 4096),
    preset("performance-4x", "performance", 4, 8192),
    preset("performance-6x", "performance", 6, 12288),
    preset("performance-8x", "performance", 8, 16384),
    preset("performance-10x", "performance", 10, 20480),
    preset("performance-12x", "performance", 12, 24576),
    preset("performance-14x", "performance", 14, 28672),
    preset("performance-16x", "performance", 16, 32768),
    gpu("a100-40gb", "a100-pcie-40gb"),
    gpu("a100-80gb", "a100-sxm4-80gb"),
    gpu("l40s", "l40s"),
    gpu("a10", "a10"),
];

pub const DEFAULT_VM_SIZE: &str = "shared-cpu-1x";

pub fn preset_by_name(name: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|p| p.name == name)
}

pub fn preset_names() -> String {
    PRESETS
        .iter()
        .filter(|p| p.gpu_kind.is_none())
        .map(|p| p.name)
        .collect::<Vec<_>>()
        .join(", ")
}

impl Preset {
    pub fn to_guest(&self) -> MachineGuest {
        MachineGuest {
            cpu_kind: self.cpu_kind.to_string(),
            cpus: self.cpus,
            memory_mb: self.memory_mb,
            gpu_kind: self.gpu_kind.map(str::to_string),
            gpus: self.gpu_kind.map(|_| 1),
            ..Default::default()
        }
    }
}

/// The limits Fly applies per CPU kind.
pub struct KindLimits {
    pub cpus: &'static [i64],
    pub memory_step_mb: i64,
    pub min_mb_per_cpu: i64,
    pub max_mb_per_cpu: i64,
}

pub fn limits(cpu_kind: &str) -> Option<KindLimits> {
    match cpu_kind {
        "shared" => Some(KindLimits {
            cpus: &[1, 2, 4, 6, 8],
            memory_step_mb: 256,
            min_mb_per_cpu: 256,
            max_mb_per_cpu: 2048,
        }),
        "performance" => Some(KindLimits {
            cpus: &[1, 2, 4, 6, 8, 10, 12, 14, 16, 32, 64, 128],
            memory_step_mb: 1024,
            min_mb_per_cpu: 2048,
            max_mb_per_cpu: 8192,
        }),
        _ => None,
    }
}

/// Name of the preset a guest corresponds to, as flyctl shows it (`shared-cpu-2x`).
pub fn size_name(guest: &MachineGuest) -> String {
    if let Some(kind) = &guest.gpu_kind {
        return kind.clone();
    }
    match guest.cpu_kind.as_str() {
        "performance" => format!("performance-{}x", guest.cpus),
        _ => format!("shared-cpu-{}x", guest.cpus),
    }
}
