//! Typed handles on the pinned maps, opened either from a freshly loaded object (the
//! daemon) or from the pins alone (`robustifier maps`, tests, other tools).

use std::path::Path;

use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, Map, MapData, PerCpuArray},
};
use robustifier_common::{
    BackendLoad, BlockRule, ClientClass, DataPathConfig, MAP_BACKENDS, MAP_BLOCK_V4, MAP_BLOCK_V6,
    MAP_CLASS_V4, MAP_CLASS_V6, MAP_CONFIG, MAP_SERVICES, MAP_SVC_STATE, MAP_SVC_STATS,
    MAP_XDP_STATS, ServiceKey, ServiceState, ServiceStats, ServiceValue, XdpStats,
};

use super::DataPathError;

pub struct Tables {
    pub services: HashMap<MapData, ServiceKey, ServiceValue>,
    pub svc_stats: PerCpuArray<MapData, ServiceStats>,
    pub xdp_stats: PerCpuArray<MapData, XdpStats>,
    pub block_v4: LpmTrie<MapData, [u8; 4], BlockRule>,
    pub block_v6: LpmTrie<MapData, [u8; 16], BlockRule>,
    pub class_v4: LpmTrie<MapData, [u8; 4], ClientClass>,
    pub class_v6: LpmTrie<MapData, [u8; 16], ClientClass>,
    pub config: Array<MapData, DataPathConfig>,
    pub svc_state: Array<MapData, ServiceState>,
    pub backends: Array<MapData, BackendLoad>,
}

impl Tables {
    /// Takes the maps out of a loaded object.
    pub fn from_ebpf(ebpf: &mut Ebpf) -> Result<Tables, DataPathError> {
        Tables::open(|name| ebpf.take_map(name).ok_or(DataPathError::MissingMap(name)))
    }

    /// Opens the maps pinned under `pin_dir` by a running or earlier daemon.
    pub fn from_pins(pin_dir: &Path) -> Result<Tables, DataPathError> {
        Tables::open(|name| {
            let path = pin_dir.join(name);
            MapData::from_pin(&path)
                .and_then(Map::from_map_data)
                .map_err(|source| DataPathError::Pinned { path, source })
        })
    }

    fn open(
        mut get: impl FnMut(&'static str) -> Result<Map, DataPathError>,
    ) -> Result<Tables, DataPathError> {
        fn typed<T: TryFrom<Map, Error = aya::maps::MapError>>(
            name: &'static str,
            map: Result<Map, DataPathError>,
        ) -> Result<T, DataPathError> {
            T::try_from(map?).map_err(|source| DataPathError::Map { name, source })
        }
        Ok(Tables {
            services: typed(MAP_SERVICES, get(MAP_SERVICES))?,
            svc_stats: typed(MAP_SVC_STATS, get(MAP_SVC_STATS))?,
            xdp_stats: typed(MAP_XDP_STATS, get(MAP_XDP_STATS))?,
            block_v4: typed(MAP_BLOCK_V4, get(MAP_BLOCK_V4))?,
            block_v6: typed(MAP_BLOCK_V6, get(MAP_BLOCK_V6))?,
            class_v4: typed(MAP_CLASS_V4, get(MAP_CLASS_V4))?,
            class_v6: typed(MAP_CLASS_V6, get(MAP_CLASS_V6))?,
            config: typed(MAP_CONFIG, get(MAP_CONFIG))?,
            svc_state: typed(MAP_SVC_STATE, get(MAP_SVC_STATE))?,
            backends: typed(MAP_BACKENDS, get(MAP_BACKENDS))?,
        })
    }
}

/// Routing's read-only view of the load map (its own handle on the pinned map).
pub struct MapView {
    map: std::sync::Mutex<Array<MapData, BackendLoad>>,
}

impl MapView {
    pub fn open(pin_dir: &Path) -> Result<MapView, DataPathError> {
        let path = pin_dir.join(MAP_BACKENDS);
        let map = MapData::from_pin(&path)
            .and_then(Map::from_map_data)
            .and_then(Array::try_from)
            .map_err(|source| DataPathError::Pinned { path, source })?;
        Ok(MapView {
            map: std::sync::Mutex::new(map),
        })
    }
}

impl MapView {
    /// The load record of back-end `id`, if the writer has published one.
    pub fn record(&self, id: u32) -> Option<BackendLoad> {
        crate::sync::lock(&self.map).get(&id, 0).ok()
    }
}
