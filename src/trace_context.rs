//! Trace context across processes (cargo feature `opentelemetry`).
//!
//! A send carries the context of the current span in the message's headers,
//! written by the application's global text-map propagator (W3C
//! `traceparent` and `tracestate` with OpenTelemetry's
//! `TraceContextPropagator`); a received message gives it back
//! ([`QueuedMessage::trace_context`](crate::QueuedMessage::trace_context)).
//! Headers are stored by every provider and survive dead-lettering, put-backs
//! and moves between providers, so the context does too.
//!
//! Without the feature, [`inject`] hands the options back untouched.

use std::borrow::Cow;

use crate::SendOptions;

/// The options a send goes out with: `options`, plus the current trace
/// context's headers when there is a sampled or unsampled but valid span
/// context and the caller set none of the propagator's fields itself.
///
/// The caller's context wins whole: if it set any of the propagator's
/// fields (`traceparent`, `tracestate`, ..., compared without ASCII case,
/// as [`extract`] reads them), nothing is injected, so a message never
/// carries the caller's `tracestate` with the library's `traceparent`.
/// Fields the propagator writes empty (an empty `tracestate`) and keys the
/// library reserves are left out.
#[cfg(feature = "opentelemetry")]
pub(crate) fn inject(options: &SendOptions) -> Cow<'_, SendOptions> {
    use opentelemetry::{global, trace::TraceContextExt};

    let cx = current();
    if !cx.span().span_context().is_valid() {
        return Cow::Borrowed(options);
    }
    let mut fields = crate::Headers::new();
    let callers = global::get_text_map_propagator(|propagator| {
        let set_by_caller = propagator.fields().any(|field| {
            options
                .header_map()
                .keys()
                .any(|key| key.eq_ignore_ascii_case(field))
        });
        if !set_by_caller {
            propagator.inject_context(&cx, &mut Carrier(&mut fields));
        }
        set_by_caller
    });
    if callers {
        return Cow::Borrowed(options);
    }
    fields.retain(|key, value| {
        !value.is_empty()
            && !crate::send_options::is_reserved_header(key)
            && !options
                .header_map()
                .keys()
                .any(|own| own.eq_ignore_ascii_case(key))
    });
    if fields.is_empty() {
        return Cow::Borrowed(options);
    }
    Cow::Owned(options.clone().headers(fields))
}

/// Without the feature there is no context to carry.
#[cfg(not(feature = "opentelemetry"))]
#[inline(always)]
pub(crate) fn inject(options: &SendOptions) -> Cow<'_, SendOptions> {
    Cow::Borrowed(options)
}

/// The context a send carries: the current `tracing` span's, when an
/// OpenTelemetry layer (`tracing-opentelemetry`) gives it one, else
/// OpenTelemetry's own current context (code that uses its API directly).
#[cfg(feature = "opentelemetry")]
fn current() -> opentelemetry::Context {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    let cx = tracing::Span::current().context();
    if cx.span().span_context().is_valid() {
        cx
    } else {
        opentelemetry::Context::current()
    }
}

/// The context the headers of a received message carry, read by the
/// application's global text-map propagator; an empty context when they
/// carry none (never the receiver's own current context, which
/// `TextMapPropagator::extract` would fall back to).
#[cfg(feature = "opentelemetry")]
pub(crate) fn extract(headers: &crate::Headers) -> opentelemetry::Context {
    let empty = opentelemetry::Context::new();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract_with_context(&empty, &Reader(headers))
    })
}

/// Headers being written by a propagator.
#[cfg(feature = "opentelemetry")]
struct Carrier<'a>(&'a mut crate::Headers);

#[cfg(feature = "opentelemetry")]
impl opentelemetry::propagation::Injector for Carrier<'_> {
    fn set(&mut self, key: &str, value: String) {
        // Propagators write lower-case W3C keys; keep them as they are.
        self.0.insert(key.to_owned(), value);
    }
}

/// A received message's headers, read by a propagator.
#[cfg(feature = "opentelemetry")]
struct Reader<'a>(&'a crate::Headers);

#[cfg(feature = "opentelemetry")]
impl opentelemetry::propagation::Extractor for Reader<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        // Header keys are matched without case, as HTTP's are.
        self.0.get(key).map(String::as_str).or_else(|| {
            self.0
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v.as_str())
        })
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}
