//! A migration error that wraps copy, image and store errors names each cause once when a
//! reporter walks the chain (`rbdm_store::report`, anyhow's `{:#}`), as the CLI's lines do.

use rbdm_copy::CopyError;
use rbdm_migration::Error;
use rbdm_registry::SourceError;

fn io(context: &str) -> rbdm_store::Error {
    rbdm_store::Error::Io {
        context: context.into(),
        source: std::io::Error::from_raw_os_error(libc::EIO),
    }
}

#[test]
fn wrapped_store_error_prints_each_cause_once() {
    let e = Error::Copy(CopyError::Store {
        object: 3,
        source: io("write obj.3"),
    });
    let io_text = std::io::Error::from_raw_os_error(libc::EIO).to_string();
    assert_eq!(
        rbdm_store::report(&e),
        format!("destination object 3: write obj.3: {io_text}")
    );
    assert_eq!(e.errno(), libc::EIO);

    let e = Error::Image(rbdm_image::Error::Store(io("open header")));
    assert_eq!(rbdm_store::report(&e), format!("open header: {io_text}"));
}

#[test]
fn wrapped_source_error_prints_each_cause_once() {
    let inner = SourceError::io("read a.raw", std::io::Error::from_raw_os_error(libc::EIO));
    let io_text = std::io::Error::from_raw_os_error(libc::EIO).to_string();
    let e = Error::Copy(CopyError::Source(inner));
    assert_eq!(
        rbdm_store::report(&e),
        format!("reading the source: read a.raw: {io_text}")
    );
    let e = Error::SourceUnavailable {
        image: "dst".into(),
        source: SourceError::NotFound("file a.raw does not exist".into()),
    };
    assert_eq!(
        rbdm_store::report(&e),
        "cannot open the migration source of image 'dst': file a.raw does not exist"
    );
}
