//! Countries of addresses, from a GeoIP2 database the caller opens.

use std::net::IpAddr;

use serde::Deserialize;

/// Country lookups (GeoIP2/GeoLite2 country database).
pub struct Geo {
    reader: maxminddb::Reader<Vec<u8>>,
}

#[derive(Deserialize)]
struct CountryRecord<'a> {
    #[serde(borrow)]
    country: Option<IsoCode<'a>>,
    #[serde(borrow)]
    registered_country: Option<IsoCode<'a>>,
}

#[derive(Deserialize)]
struct IsoCode<'a> {
    iso_code: Option<&'a str>,
}

impl Geo {
    /// A database the caller read (the engine opens no file).
    pub fn from_bytes(bytes: Vec<u8>) -> anyhow::Result<Geo> {
        let reader = maxminddb::Reader::from_source(bytes)
            .map_err(|e| anyhow::anyhow!("not a GeoIP2 database: {e}"))?;
        Ok(Geo { reader })
    }

    /// The country of `addr`, or None when the database does not know it.
    pub fn country(&self, addr: IpAddr) -> Option<[u8; 2]> {
        let record: CountryRecord = self.reader.lookup(addr).ok()??;
        let code = record
            .country
            .and_then(|c| c.iso_code)
            .or(record.registered_country.and_then(|c| c.iso_code))?;
        let b = code.as_bytes();
        (b.len() == 2).then(|| [b[0], b[1]])
    }
}
