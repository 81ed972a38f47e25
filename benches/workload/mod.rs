//! Seeded workload generator for the benchmarks: Event Hubs bodies
//! (`{"records":[…]}`, 1–50 records each) of Azure Activity Log records in
//! the shapes of `../shared/fixtures` and `samples/`, 1–3 KB per record.
//!
//! What makes it realistic, and what a run controls:
//! - Operation mix: most records are ordinary administration (VM power
//!   actions, storage keys, network and deployment writes, role
//!   assignments), Policy audit records and ResourceHealth events; about
//!   `extension_share` of the records (default 1%) are VM or scale-set
//!   extension writes and deletes. Every ARM operation yields its `Start`
//!   (and for long-running writes `Accept`) record before the final
//!   `Success`/`Failure`, with one `correlationId`, as Azure exports them.
//! - Skew: resource names, principals and caller IPs are drawn from Zipf
//!   distributions (a few hot VMs, CI runners and admins; a long tail).
//! - Callers are real public addresses taken from the real ASN data set
//!   (`scripts/fetch-asn-db.sh` → `data/asn`), so they resolve: about a
//!   third from Microsoft's AS numbers (Azure automation, excluded by the
//!   rule), the rest from random routed ranges (v4 and v6), plus a few
//!   private addresses, host names and records without a caller.
//! - Distinct terms: successful extension operations from non-Microsoft
//!   callers carry one of `terms` (resource, AS) pairs with distinct
//!   resource names; the first `terms` such operations each use a new pair,
//!   later ones repeat pairs with Zipf skew. So a run with enough records
//!   has exactly `terms` distinct new-terms keys.
//! - Seeded: the same configuration gives byte-identical bodies.
//!
//! Used by `benches/pipeline.rs`, `benches/asn.rs` and
//! `examples/bench_generate.rs` (which writes NDJSON files for `replay`).

#![allow(dead_code)] // each bench binary uses a different part

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

/// The CPUs this process may run on (`/proc/self/status`), for the
/// benches that claim one core: warns on stderr when it is more than one.
pub fn check_one_core() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let cpus = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(str::trim)
        .unwrap_or("unknown")
        .to_owned();
    if cpus.contains(',') || cpus.contains('-') {
        eprintln!("warning: running on CPUs {cpus}; run under `taskset -c N` for one core");
    }
    cpus
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    pub seed: u64,
    /// Total records (across all bodies).
    pub records: usize,
    /// Distinct (resource, AS) terms among rule-matching records.
    pub terms: usize,
    /// Distinct caller IPs (before the term callers).
    pub callers: usize,
    /// Distinct VMs the background operations touch.
    pub vms: usize,
    /// Share of records that are VM/VMSS extension writes or deletes.
    pub extension_share: f64,
    /// Largest number of records in one body (the smallest is 1).
    pub max_records_per_body: usize,
    /// `time` of the first record, Unix ms.
    pub start_ms: i64,
    /// Mean gap between records, ms.
    pub gap_ms: f64,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        WorkloadConfig {
            seed: 0x00f1_257e_e11b_e4c4,
            records: 200_000,
            // About a quarter of the ~465 rule-matching records of 200,000
            // are new terms; the rest repeat known ones (store hits).
            terms: 100,
            callers: 5_000,
            vms: 2_000,
            extension_share: 0.01,
            max_records_per_body: 50,
            // 2025-03-01T00:00:00Z
            start_ms: 1_740_787_200_000,
            gap_ms: 50.0,
        }
    }
}

impl WorkloadConfig {
    /// Overrides from `--key value` arguments (`--records 1000000`);
    /// returns the arguments it did not understand.
    pub fn apply_args(&mut self, args: &[String]) -> Vec<String> {
        let mut rest = Vec::new();
        let mut i = 0;
        while i < args.len() {
            let key = args[i].as_str();
            let value = args.get(i + 1);
            let parsed = value.and_then(|v| v.replace('_', "").parse::<f64>().ok());
            let applied = match (key, parsed) {
                ("--seed", Some(v)) => {
                    self.seed = v as u64;
                    true
                }
                ("--records", Some(v)) => {
                    self.records = v as usize;
                    true
                }
                ("--terms", Some(v)) => {
                    self.terms = v as usize;
                    true
                }
                ("--callers", Some(v)) => {
                    self.callers = v as usize;
                    true
                }
                ("--vms", Some(v)) => {
                    self.vms = v as usize;
                    true
                }
                ("--extension-share", Some(v)) => {
                    self.extension_share = v;
                    true
                }
                ("--max-records-per-body", Some(v)) => {
                    self.max_records_per_body = (v as usize).max(1);
                    true
                }
                _ => false,
            };
            if applied {
                i += 2;
            } else {
                rest.push(args[i].clone());
                i += 1;
            }
        }
        rest
    }
}

/// What a generated workload holds.
#[derive(Debug, Default, Clone)]
pub struct WorkloadStats {
    pub bodies: usize,
    pub records: usize,
    pub bytes: usize,
    pub record_bytes_min: usize,
    pub record_bytes_max: usize,
    pub extension_records: usize,
    /// Successful extension records from non-Microsoft public callers
    /// (the ones the seed rule matches).
    pub matching_records: usize,
    pub distinct_terms: usize,
    pub distinct_callers: usize,
}

impl std::fmt::Display for WorkloadStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} bodies, {} records ({:.1} per body), {:.1} MB ({:.0} B/record mean, {}–{} B), {} extension records ({:.2}%), {} matching, {} distinct terms, {} distinct callers",
            self.bodies,
            self.records,
            self.records as f64 / self.bodies.max(1) as f64,
            self.bytes as f64 / 1e6,
            self.bytes as f64 / self.records.max(1) as f64,
            self.record_bytes_min,
            self.record_bytes_max,
            self.extension_records,
            100.0 * self.extension_records as f64 / self.records.max(1) as f64,
            self.matching_records,
            self.distinct_terms,
            self.distinct_callers,
        )
    }
}

// ---------------------------------------------------------------------------
// Randomness

/// SplitMix64: tiny, seeded, identical on every platform and version.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    pub fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn chance(&mut self, p: f64) -> bool {
        self.f64() < p
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// Index by weight.
    pub fn weighted(&mut self, weights: &[u32]) -> usize {
        let total: u32 = weights.iter().sum();
        let mut x = self.below(total as usize) as u32;
        for (i, w) in weights.iter().enumerate() {
            if x < *w {
                return i;
            }
            x -= w;
        }
        weights.len() - 1
    }

    pub fn guid(&mut self) -> String {
        let a = self.next_u64();
        let b = self.next_u64();
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            0x8000 | ((b >> 48) & 0x3fff),
            b & 0xffff_ffff_ffff
        )
    }

    pub fn hex(&mut self, chars: usize) -> String {
        let mut s = String::with_capacity(chars);
        while s.len() < chars {
            let _ = write!(s, "{:016x}", self.next_u64());
        }
        s.truncate(chars);
        s
    }
}

/// Zipf(s) over `0..n`: rank 0 is the most frequent.
#[derive(Debug, Clone)]
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    pub fn new(n: usize, s: f64) -> Zipf {
        let mut cdf = Vec::with_capacity(n.max(1));
        let mut total = 0.0;
        for k in 1..=n.max(1) {
            total += 1.0 / (k as f64).powf(s);
            cdf.push(total);
        }
        for c in &mut cdf {
            *c /= total;
        }
        Zipf { cdf }
    }

    pub fn sample(&self, rng: &mut Rng) -> usize {
        let x = rng.f64();
        self.cdf.partition_point(|c| *c < x).min(self.cdf.len() - 1)
    }
}

// ---------------------------------------------------------------------------
// Callers from the real ASN data set

const MICROSOFT_ASNS: &[u32] = &[3598, 8068, 8069, 8070, 8071, 8072, 8073, 8074, 8075, 12076];

/// Routed ranges of the ip-location-db CSVs (`start,end,asn,org`).
#[derive(Debug, Default)]
pub struct AsnRanges {
    v4: Vec<(u32, u32, u32)>,
    v6: Vec<(u128, u128, u32)>,
}

impl AsnRanges {
    /// Reads `asn-ipv4.csv` and `asn-ipv6.csv` from `dir`.
    pub fn load(dir: &Path) -> Result<AsnRanges, String> {
        let mut out = AsnRanges::default();
        for (file, v6) in [("asn-ipv4.csv", false), ("asn-ipv6.csv", true)] {
            let path = dir.join(file);
            let text = std::fs::read_to_string(&path).map_err(|e| {
                format!(
                    "{}: {e} (run scripts/fetch-asn-db.sh to install the real ASN data set)",
                    path.display()
                )
            })?;
            for line in text.lines() {
                let mut parts = line.splitn(4, ',');
                let (Some(start), Some(end), Some(asn)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    continue;
                };
                let Ok(asn) = asn.trim().parse::<u32>() else {
                    continue;
                };
                if asn == 0 {
                    continue;
                }
                if v6 {
                    if let (Ok(s), Ok(e)) = (start.parse::<Ipv6Addr>(), end.parse::<Ipv6Addr>()) {
                        out.v6.push((s.into(), e.into(), asn));
                    }
                } else if let (Ok(s), Ok(e)) = (start.parse::<Ipv4Addr>(), end.parse::<Ipv4Addr>())
                {
                    out.v4.push((s.into(), e.into(), asn));
                }
            }
        }
        if out.v4.is_empty() {
            return Err(format!("{}: no IPv4 ranges", dir.display()));
        }
        Ok(out)
    }

    fn random_v4(&self, rng: &mut Rng, microsoft: bool) -> (IpAddr, u32) {
        loop {
            let (s, e, asn) = *rng.pick(&self.v4);
            if MICROSOFT_ASNS.contains(&asn) != microsoft {
                continue;
            }
            let span = u64::from(e - s).min(65_535) + 1;
            let ip = s + rng.below(span as usize) as u32;
            let addr = Ipv4Addr::from(ip);
            // Skip network and broadcast-looking addresses.
            if addr.octets()[3] == 0 || addr.octets()[3] == 255 {
                continue;
            }
            return (IpAddr::V4(addr), asn);
        }
    }

    fn random_v6(&self, rng: &mut Rng) -> (IpAddr, u32) {
        loop {
            let (s, e, asn) = *rng.pick(&self.v6);
            if MICROSOFT_ASNS.contains(&asn) {
                continue;
            }
            let span = (e - s).min(u128::from(u64::MAX));
            let ip = s + u128::from(rng.next_u64()) % (span + 1);
            return (IpAddr::V6(Ipv6Addr::from(ip)), asn);
        }
    }
}

/// A caller: the `callerIpAddress` text and its AS (None when it cannot
/// resolve: private, host name).
#[derive(Debug, Clone)]
struct Caller {
    text: String,
    asn: Option<u32>,
}

fn caller_pool(ranges: &AsnRanges, n: usize, rng: &mut Rng) -> Vec<Caller> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        // Rank order matters (Zipf): interleave kinds so hot ranks mix
        // Microsoft automation, corporate egress and CI.
        let kind = match i % 100 {
            0..=34 => 0,  // Microsoft (Azure Policy, Defender, hosted agents)
            35..=84 => 1, // public IPv4 elsewhere
            85..=94 => 2, // public IPv6
            95..=97 => 3, // private (VNet, private link)
            _ => 4,       // not an IP
        };
        let caller = match kind {
            0 | 1 => {
                let (ip, asn) = ranges.random_v4(rng, kind == 0);
                Caller {
                    text: ip.to_string(),
                    asn: Some(asn),
                }
            }
            2 if !ranges.v6.is_empty() => {
                let (ip, asn) = ranges.random_v6(rng);
                Caller {
                    text: ip.to_string(),
                    asn: Some(asn),
                }
            }
            2 | 3 => Caller {
                text: format!(
                    "10.{}.{}.{}",
                    rng.below(256),
                    rng.below(256),
                    rng.range(1, 254)
                ),
                asn: None,
            },
            _ => Caller {
                text: format!("jumpbox-{:03}.corp.example.com", rng.below(1000)),
                asn: None,
            },
        };
        out.push(caller);
    }
    out
}

// ---------------------------------------------------------------------------
// Record shapes

const TENANT: &str = "8a4de8b5-095c-47d0-a96f-a75130c61d53";
const CLAIMS: &str = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims";
const MS_CLAIMS: &str = "http://schemas.microsoft.com/identity/claims";

struct Principal {
    user: bool,
    name: String,
    display: String,
    role: &'static str,
    object_id: String,
    app_id: String,
}

fn principals(rng: &mut Rng) -> Vec<Principal> {
    const FIRST: &[&str] = &[
        "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy",
        "mallory", "niaj", "olivia", "peggy", "rupert", "sybil", "trent", "victor", "walter",
    ];
    const ROLES: &[&str] = &[
        "Owner",
        "Contributor",
        "Virtual Machine Contributor",
        "Storage Account Contributor",
        "Network Contributor",
    ];
    let mut out = Vec::new();
    for i in 0..300 {
        let user = i % 5 != 0;
        let (name, display) = if user {
            let first = FIRST[i % FIRST.len()];
            (
                format!("{first}.{i:03}@contoso.example.com"),
                format!("{}{} Admin{i:03}", first[..1].to_uppercase(), &first[1..]),
            )
        } else {
            (format!("sp-deployer-{i:03}"), format!("sp-deployer-{i:03}"))
        };
        out.push(Principal {
            user,
            name,
            display,
            role: ROLES[i % ROLES.len()],
            object_id: rng.guid(),
            app_id: rng.guid(),
        });
    }
    out
}

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out
}

fn identity_json(out: &mut String, p: &Principal, action: &str, scope: &str, sub: &str) {
    let _ = write!(
        out,
        r#"{{"authorization":{{"action":"{action}","scope":"{scope}","evidence":{{"role":"{role}","roleAssignmentScope":"/subscriptions/{sub}","roleAssignmentId":"{ra}","roleDefinitionId":"{rd}","principalId":"{pid}","principalType":"{ptype}"}}}},"claims":{{"aud":"https://management.core.windows.net/","iss":"https://sts.windows.net/{TENANT}/","{MS_CLAIMS}/objectidentifier":"{oid}","{MS_CLAIMS}/tenantid":"{TENANT}","ver":"1.0""#,
        role = p.role,
        ra = p.object_id.replace('-', ""),
        rd = &p.app_id.replace('-', ""),
        pid = p.object_id.replace('-', ""),
        ptype = if p.user { "User" } else { "ServicePrincipal" },
        oid = p.object_id,
    );
    if p.user {
        let (given, family) = p.display.split_once(' ').unwrap_or((&p.display, ""));
        let _ = write!(
            out,
            r#","{CLAIMS}/upn":"{n}","{CLAIMS}/name":"{n}","{CLAIMS}/givenname":"{given}","{CLAIMS}/surname":"{family}","name":"{d}","appid":"c44b4083-3bb0-49c1-b47d-974e53cbdf3c"}}}}"#,
            n = p.name,
            d = p.display,
        );
    } else {
        let _ = write!(
            out,
            r#","appid":"{app}","appidacr":"2","{MS_CLAIMS}/identityprovider":"https://sts.windows.net/{TENANT}/","idtyp":"app"}}}}"#,
            app = p.app_id,
        );
    }
}

/// Background operations: (operationName, resource path template under
/// PROVIDERS/, long running, weight). `{vm}` is a VM name.
const BACKGROUND: &[(&str, &str, bool, u32)] = &[
    ("MICROSOFT.COMPUTE/VIRTUALMACHINES/START/ACTION", "MICROSOFT.COMPUTE/VIRTUALMACHINES/{vm}", true, 6),
    ("MICROSOFT.COMPUTE/VIRTUALMACHINES/RESTART/ACTION", "MICROSOFT.COMPUTE/VIRTUALMACHINES/{vm}", true, 5),
    ("MICROSOFT.COMPUTE/VIRTUALMACHINES/DEALLOCATE/ACTION", "MICROSOFT.COMPUTE/VIRTUALMACHINES/{vm}", true, 4),
    ("MICROSOFT.COMPUTE/VIRTUALMACHINES/WRITE", "MICROSOFT.COMPUTE/VIRTUALMACHINES/{vm}", true, 3),
    ("MICROSOFT.COMPUTE/DISKS/WRITE", "MICROSOFT.COMPUTE/DISKS/{vm}-OSDISK", false, 3),
    ("MICROSOFT.COMPUTE/SNAPSHOTS/WRITE", "MICROSOFT.COMPUTE/SNAPSHOTS/{vm}-SNAP", true, 2),
    ("MICROSOFT.STORAGE/STORAGEACCOUNTS/WRITE", "MICROSOFT.STORAGE/STORAGEACCOUNTS/ST{vm}", false, 2),
    ("MICROSOFT.STORAGE/STORAGEACCOUNTS/LISTKEYS/ACTION", "MICROSOFT.STORAGE/STORAGEACCOUNTS/ST{vm}", false, 8),
    ("MICROSOFT.STORAGE/STORAGEACCOUNTS/BLOBSERVICES/CONTAINERS/WRITE", "MICROSOFT.STORAGE/STORAGEACCOUNTS/ST{vm}/BLOBSERVICES/DEFAULT/CONTAINERS/ARTIFACTS", false, 2),
    ("MICROSOFT.NETWORK/NETWORKSECURITYGROUPS/WRITE", "MICROSOFT.NETWORK/NETWORKSECURITYGROUPS/{vm}-NSG", true, 2),
    ("MICROSOFT.NETWORK/NETWORKSECURITYGROUPS/SECURITYRULES/WRITE", "MICROSOFT.NETWORK/NETWORKSECURITYGROUPS/{vm}-NSG/SECURITYRULES/ALLOW-HTTPS", true, 2),
    ("MICROSOFT.NETWORK/PUBLICIPADDRESSES/WRITE", "MICROSOFT.NETWORK/PUBLICIPADDRESSES/{vm}-PIP", true, 1),
    ("MICROSOFT.NETWORK/NETWORKINTERFACES/WRITE", "MICROSOFT.NETWORK/NETWORKINTERFACES/{vm}-NIC", false, 2),
    ("MICROSOFT.RESOURCES/DEPLOYMENTS/WRITE", "MICROSOFT.RESOURCES/DEPLOYMENTS/RELEASE-{vm}", true, 6),
    ("MICROSOFT.RESOURCES/DEPLOYMENTS/VALIDATE/ACTION", "MICROSOFT.RESOURCES/DEPLOYMENTS/RELEASE-{vm}", false, 3),
    ("MICROSOFT.AUTHORIZATION/ROLEASSIGNMENTS/WRITE", "MICROSOFT.AUTHORIZATION/ROLEASSIGNMENTS/{guid}", false, 2),
    ("MICROSOFT.AUTHORIZATION/ROLEASSIGNMENTS/DELETE", "MICROSOFT.AUTHORIZATION/ROLEASSIGNMENTS/{guid}", false, 1),
    ("MICROSOFT.KEYVAULT/VAULTS/WRITE", "MICROSOFT.KEYVAULT/VAULTS/KV-{vm}", false, 1),
    ("MICROSOFT.EVENTHUB/NAMESPACES/AUTHORIZATIONRULES/LISTKEYS/ACTION", "MICROSOFT.EVENTHUB/NAMESPACES/EHNS-{vm}/AUTHORIZATIONRULES/ROOTMANAGESHAREDACCESSKEY", false, 3),
    ("MICROSOFT.INSIGHTS/DIAGNOSTICSETTINGS/WRITE", "MICROSOFT.COMPUTE/VIRTUALMACHINES/{vm}/PROVIDERS/MICROSOFT.INSIGHTS/DIAGNOSTICSETTINGS/TO-EVENTHUB", false, 1),
    // A read that is logged (most reads are not).
    ("MICROSOFT.COMPUTE/VIRTUALMACHINES/INSTANCEVIEW/READ", "MICROSOFT.COMPUTE/VIRTUALMACHINES/{vm}", false, 1),
];

const EXTENSIONS: &[&str] = &[
    "CUSTOMSCRIPTEXTENSION",
    "AZUREMONITORLINUXAGENT",
    "AZUREPOLICYFORLINUX",
    "MDE.LINUX",
    "RUNCOMMANDLINUX",
    "DOCKEREXTENSION",
    "AADSSHLOGINFORLINUX",
    "SQLIAASEXTENSION",
];

struct Sub {
    id: String,
    groups: Vec<String>,
}

/// Which kind of record stream step we are in.
enum Op {
    Background(usize),
    Extension { term: Option<usize>, ms: bool },
    Policy,
    Health,
}

/// Generates the whole workload in memory: each element is one Event Hubs
/// body. Also returns what it made.
pub fn generate(
    cfg: &WorkloadConfig,
    asn_dir: &Path,
) -> Result<(Vec<Vec<u8>>, WorkloadStats), String> {
    let mut bodies = Vec::new();
    let stats = generate_each(cfg, asn_dir, |body| bodies.push(body.as_bytes().to_vec()))?;
    Ok((bodies, stats))
}

/// Generates the workload body by body (for files larger than memory
/// should hold twice).
pub fn generate_each(
    cfg: &WorkloadConfig,
    asn_dir: &Path,
    mut each: impl FnMut(&str),
) -> Result<WorkloadStats, String> {
    let ranges = AsnRanges::load(asn_dir)?;
    let mut gen = Generator::new(cfg, &ranges);
    let mut records: Vec<String> = Vec::new();
    let mut body = String::new();
    // Each body's size is drawn once, uniformly in 1..=max, before its
    // records are generated (drawing it per operation would favour small
    // bodies: the first small draw would cut the body).
    let mut want = gen.rng.range(1, cfg.max_records_per_body);
    while gen.stats.records < cfg.records {
        gen.next_operation(&mut records);
        while records.len() >= want || (gen.stats.records >= cfg.records && !records.is_empty()) {
            let take = want.min(records.len());
            body.clear();
            body.push_str("{\"records\":[");
            for (i, r) in records.drain(..take).enumerate() {
                if i > 0 {
                    body.push(',');
                }
                body.push_str(&r);
            }
            body.push_str("]}");
            gen.stats.bodies += 1;
            gen.stats.bytes += body.len();
            each(&body);
            want = gen.rng.range(1, cfg.max_records_per_body);
        }
    }
    let mut stats = gen.stats.clone();
    stats.distinct_terms = gen.terms_used.iter().filter(|u| **u).count();
    stats.distinct_callers = gen.callers_used.iter().filter(|u| **u).count()
        + gen.term_callers_used.iter().filter(|u| **u).count();
    Ok(stats)
}

struct Generator<'a> {
    cfg: &'a WorkloadConfig,
    rng: Rng,
    stats: WorkloadStats,
    now_ms: f64,
    subs: Vec<Sub>,
    principals: Vec<Principal>,
    principal_zipf: Zipf,
    callers: Vec<Caller>,
    caller_zipf: Zipf,
    microsoft_callers: Vec<usize>,
    vm_zipf: Zipf,
    /// Per term: the caller it uses (index into `term_callers`).
    term_caller: Vec<usize>,
    term_callers: Vec<Caller>,
    term_zipf: Zipf,
    next_new_term: usize,
    terms_used: Vec<bool>,
    callers_used: Vec<bool>,
    term_callers_used: Vec<bool>,
    ops_weights: Vec<u32>,
}

impl<'a> Generator<'a> {
    fn new(cfg: &'a WorkloadConfig, ranges: &AsnRanges) -> Generator<'a> {
        let mut rng = Rng::new(cfg.seed);
        let subs = (0..8)
            .map(|s| Sub {
                id: rng.guid(),
                groups: (0..6)
                    .map(|g| {
                        format!(
                            "RG-{}-{}",
                            ["WEB", "API", "DATA", "BUILD", "DEV", "OPS"][g],
                            ["PROD", "STAGE", "TEST", "SHARED"][s % 4]
                        )
                    })
                    .collect(),
            })
            .collect();
        let principals = principals(&mut rng);
        let callers = caller_pool(ranges, cfg.callers.max(10), &mut rng);
        let microsoft_callers = callers
            .iter()
            .enumerate()
            .filter(|(_, c)| c.asn.is_some_and(|a| MICROSOFT_ASNS.contains(&a)))
            .map(|(i, _)| i)
            .collect();
        // Term callers: non-Microsoft public addresses (corporate egress,
        // CI runners, home connections, attackers), a pool of their own so
        // that every term resolves to an AS the rule does not exclude.
        let n_term_callers = (cfg.terms / 4).clamp(16, 50_000);
        let term_callers: Vec<Caller> = (0..n_term_callers)
            .map(|i| {
                let (ip, asn) = if i % 10 == 9 && !ranges.v6.is_empty() {
                    ranges.random_v6(&mut rng)
                } else {
                    ranges.random_v4(&mut rng, false)
                };
                Caller {
                    text: ip.to_string(),
                    asn: Some(asn),
                }
            })
            .collect();
        let term_caller_zipf = Zipf::new(term_callers.len(), 1.0);
        let terms = cfg.terms.max(1);
        let term_caller = (0..terms)
            .map(|_| term_caller_zipf.sample(&mut rng))
            .collect();
        let ops_weights = BACKGROUND.iter().map(|b| b.3).collect();
        Generator {
            cfg,
            stats: WorkloadStats {
                record_bytes_min: usize::MAX,
                ..WorkloadStats::default()
            },
            now_ms: cfg.start_ms as f64,
            subs,
            principal_zipf: Zipf::new(principals.len(), 1.1),
            principals,
            caller_zipf: Zipf::new(callers.len(), 1.1),
            callers_used: vec![false; callers.len()],
            callers,
            microsoft_callers,
            vm_zipf: Zipf::new(cfg.vms.max(1), 1.05),
            term_caller,
            term_callers_used: vec![false; term_callers.len()],
            term_callers,
            term_zipf: Zipf::new(terms, 1.1),
            next_new_term: 0,
            terms_used: vec![false; terms],
            ops_weights,
            rng,
        }
    }

    fn vm_name(&self, vm: usize) -> String {
        format!(
            "VM-{}-{vm:05}",
            ["WEB", "API", "SQL", "BUILD", "DEV", "APP", "JOB"][vm % 7]
        )
    }

    /// Appends the records of one ARM operation (or one event).
    fn next_operation(&mut self, out: &mut Vec<String>) {
        // Extension operations are 2–3 records each: start one whenever
        // the extension records fall behind their share.
        let behind = (self.stats.extension_records as f64)
            < self.cfg.extension_share * (self.stats.records + 1) as f64;
        let x = self.rng.f64();
        let op = if behind {
            // A third from Microsoft automation (excluded ASNs), the rest
            // from the term pool.
            if self.rng.chance(0.3) {
                Op::Extension {
                    term: None,
                    ms: true,
                }
            } else {
                Op::Extension {
                    term: Some(0),
                    ms: false,
                }
            }
        } else if x < 0.06 {
            Op::Policy
        } else if x < 0.09 {
            Op::Health
        } else {
            Op::Background(self.rng.weighted(&self.ops_weights))
        };
        self.now_ms += self.cfg.gap_ms * (0.5 + self.rng.f64()) * 2.4;
        match op {
            Op::Background(i) => self.background(i, out),
            Op::Extension { term, ms } => self.extension(term.is_some(), ms, out),
            Op::Policy => self.policy(out),
            Op::Health => self.health(out),
        }
    }

    fn pick_sub_group(&mut self, vm: usize) -> (usize, usize) {
        (vm % self.subs.len(), (vm / self.subs.len()) % 6)
    }

    fn background(&mut self, i: usize, out: &mut Vec<String>) {
        let (op, tmpl, long_running, _) = BACKGROUND[i];
        let vm = self.vm_zipf.sample(&mut self.rng);
        let (s, g) = self.pick_sub_group(vm);
        let guid = self.rng.guid();
        let path = tmpl
            .replace("{vm}", &self.vm_name(vm))
            .replace("{guid}", &guid.to_uppercase());
        let caller = self.caller_zipf.sample(&mut self.rng);
        self.callers_used[caller] = true;
        let caller_text = self.callers[caller].text.clone();
        let principal = self.principal_zipf.sample(&mut self.rng);
        let success = !self.rng.chance(0.04);
        self.operation(
            s,
            g,
            &path,
            op,
            Some(&caller_text),
            principal,
            success,
            long_running,
            out,
        );
    }

    fn extension(&mut self, from_terms: bool, microsoft: bool, out: &mut Vec<String>) {
        let success = !self.rng.chance(0.05);
        let write = !self.rng.chance(0.15);
        let (target, ext, caller_text, term) = if from_terms && success {
            // A new term while any are left, then repeats with skew.
            let term = if self.next_new_term < self.terms_used.len() {
                self.next_new_term += 1;
                self.next_new_term - 1
            } else {
                self.term_zipf.sample(&mut self.rng)
            };
            let c = self.term_caller[term];
            self.term_callers_used[c] = true;
            // One distinct resource per term: VM (or scale set) and
            // extension derived from the term index.
            let target = format!("VM-EXT-{:07}", term / EXTENSIONS.len());
            let ext = EXTENSIONS[term % EXTENSIONS.len()];
            (target, ext, self.term_callers[c].text.clone(), Some(term))
        } else {
            let vm = self.vm_zipf.sample(&mut self.rng);
            let ext = *self.rng.pick(EXTENSIONS);
            let caller = if microsoft && !self.microsoft_callers.is_empty() {
                self.microsoft_callers[self.rng.below(self.microsoft_callers.len())]
            } else {
                self.caller_zipf.sample(&mut self.rng)
            };
            self.callers_used[caller] = true;
            (
                self.vm_name(vm),
                ext,
                self.callers[caller].text.clone(),
                None,
            )
        };
        let vmss = term.map_or(self.rng.chance(0.2), |t| t % 5 == 4);
        let kind = if vmss {
            "VIRTUALMACHINESCALESETS"
        } else {
            "VIRTUALMACHINES"
        };
        let action = if write { "WRITE" } else { "DELETE" };
        let op = format!("MICROSOFT.COMPUTE/{kind}/EXTENSIONS/{action}");
        let path = format!("MICROSOFT.COMPUTE/{kind}/{target}/EXTENSIONS/{ext}");
        let hash = term.unwrap_or_else(|| self.rng.below(1 << 20));
        let (s, g) = self.pick_sub_group(hash);
        let principal = self.principal_zipf.sample(&mut self.rng);
        let before = out.len();
        self.operation(
            s,
            g,
            &path,
            &op,
            Some(&caller_text),
            principal,
            success,
            write,
            out,
        );
        self.stats.extension_records += out.len() - before;
        if let Some(t) = term {
            self.terms_used[t] = true;
            self.stats.matching_records += 1;
        }
    }

    fn time_str(&mut self, offset_ms: i64) -> String {
        let ms = self.now_ms as i64 + offset_ms;
        let ticks = self.rng.below(10_000);
        let t = time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
            .expect("workload times are in range");
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}{:04}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            ms.rem_euclid(1000),
            ticks
        )
    }

    fn push(&mut self, rec: String, out: &mut Vec<String>) {
        self.stats.records += 1;
        self.stats.record_bytes_min = self.stats.record_bytes_min.min(rec.len());
        self.stats.record_bytes_max = self.stats.record_bytes_max.max(rec.len());
        out.push(rec);
    }

    /// One ARM operation: Start [, Accept], then Success or Failure.
    #[allow(clippy::too_many_arguments)]
    fn operation(
        &mut self,
        s: usize,
        g: usize,
        path: &str,
        op: &str,
        caller: Option<&str>,
        principal: usize,
        success: bool,
        long_running: bool,
        out: &mut Vec<String>,
    ) {
        let sub = self.subs[s].id.clone();
        let group = self.subs[s].groups[g].clone();
        let rid = format!("/SUBSCRIPTIONS/{sub}/RESOURCEGROUPS/{group}/PROVIDERS/{path}");
        let scope = format!("/subscriptions/{sub}/resourceGroups/{group}/providers/{path}");
        let (ns, rest) = op.split_once('/').unwrap_or((op, ""));
        let action = format!(
            "Microsoft.{}{}/{}",
            &ns["MICROSOFT.".len().min(ns.len())..][..1],
            ns["MICROSOFT.".len().min(ns.len())..][1..].to_lowercase(),
            rest.to_lowercase()
        );
        let corr = self.rng.guid();
        let mut identity = String::with_capacity(1400);
        identity_json(
            &mut identity,
            &self.principals[principal],
            &action,
            &scope,
            &sub,
        );
        let mut steps: Vec<(&str, &str, Option<&str>, i64)> = vec![(
            "Start",
            "Started.",
            None,
            -(self.rng.range(4_000, 20_000) as i64),
        )];
        if success {
            if long_running {
                steps.push((
                    "Accept",
                    "Accepted.Created",
                    Some("Created"),
                    -(self.rng.range(1_000, 3_000) as i64),
                ));
            }
            let code = if long_running && op.ends_with("/WRITE") {
                "Created"
            } else {
                "OK"
            };
            steps.push((
                "Success",
                if code == "OK" {
                    "Succeeded.OK"
                } else {
                    "Succeeded.Created"
                },
                Some(code),
                0,
            ));
        } else {
            steps.push(("Failure", "Failed.Forbidden", Some("Forbidden"), 0));
        }
        let level_final = if success { "Information" } else { "Error" };
        let principal_name = self.principals[principal].name.clone();
        for (rtype, sig, status, offset) in steps {
            let time = self.time_str(offset);
            let mut props = format!(
                r#"{{"eventCategory":"Administrative","entity":"{rid}","message":"{action}","hierarchy":"{TENANT}/{sub}""#
            );
            if let Some(status) = status {
                let _ = write!(
                    props,
                    r#","statusCode":"{status}","serviceRequestId":"{}""#,
                    self.rng.guid()
                );
            }
            if rtype == "Success" && op.ends_with("/WRITE") {
                // ARM puts the resource representation in responseBody, as
                // a JSON string.
                let pad = self.rng.below(100);
                // A VM's representation lists its extensions: such a
                // record holds every needle of the seed rule (compute,
                // virtualmachines, extensions, write, success), so the
                // prefilter lets it through to the full path.
                let resources = if op == "MICROSOFT.COMPUTE/VIRTUALMACHINES/WRITE" {
                    format!(
                        r#","resources":[{{"id":"{scope}/extensions/AzureMonitorLinuxAgent"}},{{"id":"{scope}/extensions/MDE.Linux"}}]"#
                    )
                } else {
                    String::new()
                };
                let body = format!(
                    r#"{{"id":"{scope}","name":"{name}","type":"{ns}","location":"westeurope","tags":{{"owner":"{principal_name}","costCenter":"{cc}","note":"{note}"}},"properties":{{"provisioningState":"Succeeded","timeCreated":"{time}"}}{resources}}}"#,
                    name = path.rsplit('/').next().unwrap_or(path),
                    cc = self.rng.below(10_000),
                    note = "x".repeat(pad),
                );
                let _ = write!(props, r#","responseBody":"{}""#, esc(&body));
            }
            if rtype == "Failure" {
                let msg = format!(
                    r#"{{"error":{{"code":"AuthorizationFailed","message":"The client '{principal_name}' does not have authorization to perform action '{action}' over scope '{scope}'."}}}}"#
                );
                let _ = write!(props, r#","statusMessage":"{}""#, esc(&msg));
            }
            props.push('}');
            let duration = if rtype == "Start" {
                0
            } else {
                self.rng.range(40, 90_000)
            };
            let level = if rtype == "Start" {
                "Information"
            } else {
                level_final
            };
            let mut rec = String::with_capacity(identity.len() + props.len() + 600);
            let _ = write!(
                rec,
                r#"{{"time":"{time}","resourceId":"{rid}","operationName":"{op}","category":"Administrative","resultType":"{rtype}","resultSignature":"{sig}","durationMs":{duration}"#
            );
            if let Some(c) = caller {
                let _ = write!(rec, r#","callerIpAddress":"{c}""#);
            }
            let _ = write!(
                rec,
                r#","correlationId":"{corr}","identity":{identity},"level":"{level}","location":"westeurope","properties":{props},"tenantId":"{TENANT}"}}"#
            );
            self.push(rec, out);
        }
    }

    /// An Azure Policy audit record (category Policy), as policy
    /// evaluation writes them for existing resources.
    fn policy(&mut self, out: &mut Vec<String>) {
        let vm = self.vm_zipf.sample(&mut self.rng);
        let (s, g) = self.pick_sub_group(vm);
        let sub = self.subs[s].id.clone();
        let group = self.subs[s].groups[g].clone();
        let name = self.vm_name(vm);
        let rid = format!(
            "/SUBSCRIPTIONS/{sub}/RESOURCEGROUPS/{group}/PROVIDERS/MICROSOFT.COMPUTE/VIRTUALMACHINES/{name}"
        );
        let time = self.time_str(0);
        let corr = self.rng.guid();
        let assignment = self.rng.hex(24);
        let definition = self.rng.guid();
        let policies = format!(
            r#"[{{"policyDefinitionId":"/providers/Microsoft.Authorization/policyDefinitions/{definition}/","policySetDefinitionId":"/providers/Microsoft.Authorization/policySetDefinitions/1f3afdf9-d0c9-4c3d-847f-89da613e70a8/","policyDefinitionReferenceId":"{r}","policySetDefinitionName":"1f3afdf9-d0c9-4c3d-847f-89da613e70a8","policyDefinitionName":"{definition}","policyDefinitionEffect":"AuditIfNotExists","policyAssignmentId":"/subscriptions/{sub}/providers/Microsoft.Authorization/policyAssignments/{assignment}/","policyAssignmentName":"{assignment}","policyAssignmentScope":"/subscriptions/{sub}","policyAssignmentParameters":{{}}}}]"#,
            r = self.rng.hex(20),
        );
        let rec = format!(
            r#"{{"time":"{time}","resourceId":"{rid}","operationName":"MICROSOFT.AUTHORIZATION/POLICIES/AUDITIFNOTEXISTS/ACTION","category":"Policy","resultType":"Success","resultSignature":"Succeeded","durationMs":0,"callerIpAddress":"{caller}","correlationId":"{corr}","identity":{{"authorization":{{"action":"Microsoft.Compute/virtualMachines/write","scope":"/subscriptions/{sub}/resourceGroups/{group}/providers/Microsoft.Compute/virtualMachines/{name}"}},"claims":{{"aud":"https://management.core.windows.net/","iss":"https://sts.windows.net/{TENANT}/","appid":"1d78a85d-813d-46f0-b496-dd72f50a3ec0","appidacr":"2","idtyp":"app","ver":"1.0"}}}},"level":"Warning","location":"westeurope","properties":{{"isComplianceCheck":"True","resourceLocation":"westeurope","ancestors":"{TENANT}","policies":"{policies}","hierarchy":"{TENANT}/{sub}"}},"tenantId":"{TENANT}"}}"#,
            caller = self.callers[self.microsoft_callers.first().copied().unwrap_or(0)].text,
            policies = esc(&policies),
        );
        self.push(rec, out);
    }

    /// A ResourceHealth event (no caller, no identity).
    fn health(&mut self, out: &mut Vec<String>) {
        let vm = self.vm_zipf.sample(&mut self.rng);
        let (s, g) = self.pick_sub_group(vm);
        let sub = self.subs[s].id.clone();
        let group = self.subs[s].groups[g].clone();
        let name = self.vm_name(vm);
        let time = self.time_str(0);
        let corr = self.rng.guid();
        let rec = format!(
            r#"{{"time":"{time}","resourceId":"/SUBSCRIPTIONS/{sub}/RESOURCEGROUPS/{group}/PROVIDERS/MICROSOFT.COMPUTE/VIRTUALMACHINES/{name}","correlationId":"{corr}","operationName":"Microsoft.Resourcehealth/healthevent/Updated/action","level":"Information","resultType":"Updated","category":"ResourceHealth","properties":{{"eventCategory":"ResourceHealth","eventProperties":{{"title":"This virtual machine is starting as requested by an authorized user or process. It will be online shortly.","details":"VirtualMachineStartInitiatedByControlPlane","currentHealthStatus":"Unknown","previousHealthStatus":"Unknown","type":"Downtime","cause":"UserInitiated"}},"eventDataId":"{id}","resourceType":"Microsoft.Compute/virtualMachines","resourceGroup":"{group}","subscriptionId":"{sub}","tenantId":"{TENANT}","summary":"This virtual machine is starting as requested by an authorized user or process. It will be online shortly. Resource health reflects the last known state of the resource; it is refreshed every few minutes while the platform works on the request and completes the start sequence."}}}}"#,
            id = self.rng.guid(),
        );
        self.push(rec, out);
    }
}
