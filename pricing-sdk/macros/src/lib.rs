//! # pricing-sdk-macros: the `#[pricing_sdk::policy]` attribute
//!
//! Owns one thing: turning an inherent `impl` block whose methods price
//! metrics into a complete [`Policy`] implementation and its component
//! export. Use it through `pricing_sdk::policy`, which re-exports it; the
//! generated code names `::pricing_sdk`, so a policy depends on that crate.
//!
//! [`Policy`]: https://docs.rs/pricing-sdk/latest/pricing_sdk/trait.Policy.html

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{quote, quote_spanned};
use syn::parse::{Parse, ParseStream, Parser};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{
    Attribute, Expr, FnArg, Ident, ImplItem, ImplItemFn, ItemImpl, Lit, LitStr, Meta, ReturnType,
    Token, Type,
};

/// Makes a pricing policy of an inherent `impl` block: each method marked
/// `#[metric("measurement", "friendly", unit = "…")]` prices that metric.
///
/// The attribute generates `impl pricing_sdk::Policy` for the type:
/// - `configure` parses the site's configuration (TOML or JSON) into the
///   type with `pricing_sdk::parse_config`, so the type derives
///   `serde::Deserialize` and implements `Default` (the prices without
///   configuration);
/// - `describe` names the policy after the crate (its package name without
///   `-policy`; `name = "…"` to choose), with the crate's version
///   (`version = "…"`) and description (`about = "…"`), and lists the
///   metrics in the order of their methods;
/// - `bill` calls the method of the step's metric and refuses any other;
/// - `examples` calls the block's `fn examples(&self) -> Vec<Example>` if
///   there is one;
/// - `Default` calls the block's `fn default() -> Self` if there is one
///   (the prices without configuration), so a small policy is one block;
/// - and the component export (`pricing_sdk::export_policy!`).
///
/// A metric method takes `&self` and either the step (`&Usage`) or its
/// increase (`Decimal`, the counter's growth in unit-hours), and returns
/// `Decimal` or `Result<Decimal, Error>`. Its description is its doc
/// comment, or `about = "…"`; `decimal` lets quotes take decimal amounts.
/// When no method takes the step, the policy declares that it reads no
/// tags; otherwise `tags = ["key", …]` declares the ones it reads (all by
/// default).
#[proc_macro_attribute]
pub fn policy(attr: TokenStream, item: TokenStream) -> TokenStream {
    match expand(attr.into(), item.into()) {
        Ok(tokens) => tokens.into(),
        Err(error) => error.to_compile_error().into(),
    }
}

/// The expansion, on `proc_macro2` tokens (unit-tested natively).
fn expand(attr: TokenStream2, item: TokenStream2) -> syn::Result<TokenStream2> {
    let options = PolicyOptions::parse(attr)?;
    let mut block: ItemImpl = syn::parse2(item)?;
    if let Some((_, path, _)) = &block.trait_ {
        return Err(syn::Error::new(
            path.span(),
            "#[pricing_sdk::policy] goes on an inherent impl block (`impl MyPolicy { … }`), not a trait impl",
        ));
    }
    if !block.generics.params.is_empty() {
        return Err(syn::Error::new(
            block.generics.span(),
            "a policy is one concrete type: #[pricing_sdk::policy] takes no generics",
        ));
    }
    let mut metrics: Vec<MetricMethod> = Vec::new();
    let (mut has_examples, mut has_default) = (false, false);
    for item in &mut block.items {
        let ImplItem::Fn(method) = item else { continue };
        if let Some(metric) = MetricMethod::take(method)? {
            if let Some(first) = metrics
                .iter()
                .find(|m| m.name.value() == metric.name.value())
            {
                let mut error = syn::Error::new(
                    metric.name.span(),
                    format!("metric {:?} is priced twice", metric.name.value()),
                );
                error.combine(syn::Error::new(first.name.span(), "first priced here"));
                return Err(error);
            }
            metrics.push(metric);
        } else if method.sig.ident == "examples" {
            has_examples = true;
        } else if method.sig.ident == "default" && method.sig.inputs.is_empty() {
            has_default = true;
        }
    }
    if metrics.is_empty() {
        return Err(syn::Error::new(
            block.self_ty.span(),
            "a policy prices at least one metric: mark a method `#[metric(\"measurement\", \"friendly\", unit = \"…\")]`",
        ));
    }

    let ty = &block.self_ty;
    let name = match &options.name {
        Some(name) => quote!(#name),
        None => quote!(::pricing_sdk::__macro::policy_name(env!("CARGO_PKG_NAME"))),
    };
    let version = match &options.version {
        Some(version) => quote!(#version),
        None => quote!(env!("CARGO_PKG_VERSION")),
    };
    let about = match &options.about {
        Some(about) => quote!(#about),
        None => quote!(::pricing_sdk::__macro::policy_about(
            env!("CARGO_PKG_DESCRIPTION"),
            env!("CARGO_PKG_NAME")
        )),
    };
    let infos = metrics.iter().map(MetricMethod::info);
    let tags = match &options.tags {
        Some(tags) => quote!(.reads_tags(&[#(#tags),*])),
        None if metrics.iter().all(|m| !m.takes_usage) => quote!(.reads_tags(&[])),
        None => quote!(),
    };
    let arms = metrics.iter().map(MetricMethod::arm);
    let examples = has_examples.then(|| {
        quote! {
            fn examples(&self) -> ::std::vec::Vec<::pricing_sdk::Example> {
                <#ty>::examples(self)
            }
        }
    });
    let default = has_default.then(|| {
        quote! {
            impl ::core::default::Default for #ty {
                fn default() -> Self {
                    <#ty>::default()
                }
            }
        }
    });

    Ok(quote! {
        #block

        #default

        impl ::pricing_sdk::Policy for #ty {
            fn configure(config: &str) -> ::core::result::Result<Self, ::pricing_sdk::Error> {
                ::pricing_sdk::parse_config(config)
            }

            fn describe(&self) -> ::pricing_sdk::PolicyInfo {
                ::pricing_sdk::PolicyInfo::new(#name, #version, #about)
                    #(.metric(#infos))*
                    #tags
            }

            fn bill(
                &self,
                usage: &::pricing_sdk::Usage,
            ) -> ::core::result::Result<::pricing_sdk::Decimal, ::pricing_sdk::Error> {
                match usage.metric.as_str() {
                    #(#arms)*
                    other => ::core::result::Result::Err(::pricing_sdk::Error::new(
                        ::std::format!("policy {} does not price {other}", #name),
                    )),
                }
            }

            #examples
        }

        ::pricing_sdk::export_policy!(#ty);
    })
}

/// The attribute's own arguments: `name`, `version`, `about`, `tags`.
#[derive(Default)]
struct PolicyOptions {
    name: Option<LitStr>,
    version: Option<LitStr>,
    about: Option<LitStr>,
    tags: Option<Vec<LitStr>>,
}

impl PolicyOptions {
    fn parse(attr: TokenStream2) -> syn::Result<Self> {
        let mut options = PolicyOptions::default();
        let metas = Punctuated::<Meta, Token![,]>::parse_terminated.parse2(attr)?;
        for meta in metas {
            let Meta::NameValue(pair) = &meta else {
                return Err(syn::Error::new(
                    meta.span(),
                    "expected `name = \"…\"`, `version = \"…\"`, `about = \"…\"` or `tags = [\"…\", …]`",
                ));
            };
            let key = pair
                .path
                .get_ident()
                .map(Ident::to_string)
                .unwrap_or_default();
            let slot = match key.as_str() {
                "name" => &mut options.name,
                "version" => &mut options.version,
                "about" => &mut options.about,
                "tags" => {
                    let Expr::Array(array) = &pair.value else {
                        return Err(syn::Error::new(
                            pair.value.span(),
                            "tags are a list: `tags = [\"flavor\", …]` (`[]` for none)",
                        ));
                    };
                    let tags = array.elems.iter().map(string).collect::<syn::Result<_>>()?;
                    options.tags = Some(tags);
                    continue;
                }
                _ => {
                    return Err(syn::Error::new(
                        pair.path.span(),
                        format!("unknown argument `{key}`: expected name, version, about or tags"),
                    ));
                }
            };
            if slot.is_some() {
                return Err(syn::Error::new(
                    pair.path.span(),
                    format!("`{key}` given twice"),
                ));
            }
            *slot = Some(string(&pair.value)?);
        }
        Ok(options)
    }
}

/// A string literal, or an error on `expr` saying one was expected.
fn string(expr: &Expr) -> syn::Result<LitStr> {
    match expr {
        Expr::Lit(syn::ExprLit {
            lit: Lit::Str(text),
            ..
        }) => Ok(text.clone()),
        other => Err(syn::Error::new(other.span(), "expected a string literal")),
    }
}

/// A method marked `#[metric(…)]`.
struct MetricMethod {
    method: Ident,
    name: LitStr,
    friendly: LitStr,
    unit: LitStr,
    about: LitStr,
    decimal: bool,
    /// Takes the step (`&Usage`) rather than its increase (`Decimal`).
    takes_usage: bool,
    /// Returns `Result<Decimal, Error>` rather than `Decimal`.
    returns_result: bool,
    span: Span,
}

impl MetricMethod {
    /// Removes the `#[metric]` attribute from `method` and reads it, or
    /// `None` for a method without one.
    fn take(method: &mut ImplItemFn) -> syn::Result<Option<Self>> {
        let Some(at) = method
            .attrs
            .iter()
            .position(|a| a.path().is_ident("metric"))
        else {
            return Ok(None);
        };
        let attr = method.attrs.remove(at);
        if let Some(again) = method.attrs.iter().find(|a| a.path().is_ident("metric")) {
            return Err(syn::Error::new(
                again.span(),
                "one #[metric] per method: a method prices one metric",
            ));
        }
        let args: MetricArgs = attr.parse_args()?;
        let about = match args.about {
            Some(about) => about,
            None => doc_comment(&method.attrs).ok_or_else(|| {
                syn::Error::new(
                    attr.span(),
                    "say what the metric measures: a doc comment on the method, or `about = \"…\"`",
                )
            })?,
        };
        let sig = &method.sig;
        let shape_error = || {
            syn::Error::new(
                sig.span(),
                "a metric method is `fn(&self, usage: &Usage)` or `fn(&self, increase: Decimal)`, \
                 returning `Decimal` or `Result<Decimal, Error>`",
            )
        };
        if sig.asyncness.is_some() || sig.constness.is_some() || !sig.generics.params.is_empty() {
            return Err(shape_error());
        }
        let mut inputs = sig.inputs.iter();
        match inputs.next() {
            Some(FnArg::Receiver(receiver))
                if receiver.reference.is_some() && receiver.mutability.is_none() => {}
            _ => return Err(shape_error()),
        }
        let takes_usage = match (inputs.next(), inputs.next()) {
            (Some(FnArg::Typed(arg)), None) => matches!(&*arg.ty, Type::Reference(_)),
            _ => return Err(shape_error()),
        };
        let returns_result = match &sig.output {
            ReturnType::Type(_, ty) => is_result(ty),
            ReturnType::Default => return Err(shape_error()),
        };
        Ok(Some(MetricMethod {
            method: sig.ident.clone(),
            name: args.name,
            friendly: args.friendly,
            unit: args.unit,
            about,
            decimal: args.decimal,
            takes_usage,
            returns_result,
            span: sig.span(),
        }))
    }

    /// The `MetricInfo` this method declares.
    fn info(&self) -> TokenStream2 {
        let MetricMethod {
            name,
            friendly,
            unit,
            about,
            ..
        } = self;
        let constructor = if self.decimal {
            quote!(decimal)
        } else {
            quote!(new)
        };
        quote!(::pricing_sdk::MetricInfo::#constructor(#name, #friendly, #unit, #about))
    }

    /// The `match` arm of `bill` that calls this method.
    fn arm(&self) -> TokenStream2 {
        let (name, method) = (&self.name, &self.method);
        let argument = if self.takes_usage {
            quote!(usage)
        } else {
            quote!(usage.delta()?)
        };
        let call = quote_spanned!(self.span=> Self::#method(self, #argument));
        if self.returns_result {
            quote!(#name => #call,)
        } else {
            quote!(#name => ::core::result::Result::Ok(#call),)
        }
    }
}

/// `#[metric("measurement", "friendly", unit = "…", about = "…", decimal)]`.
struct MetricArgs {
    name: LitStr,
    friendly: LitStr,
    unit: LitStr,
    about: Option<LitStr>,
    decimal: bool,
}

impl Parse for MetricArgs {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let usage = "expected #[metric(\"measurement\", \"friendly name\", unit = \"…\")], \
                     optionally with `about = \"…\"` and `decimal`";
        let name: LitStr = input
            .parse()
            .map_err(|e| syn::Error::new(e.span(), usage))?;
        input.parse::<Token![,]>()?;
        let friendly: LitStr = input
            .parse()
            .map_err(|e| syn::Error::new(e.span(), usage))?;
        let (mut unit, mut about, mut decimal) = (None, None, false);
        while !input.is_empty() {
            input.parse::<Token![,]>()?;
            if input.is_empty() {
                break;
            }
            let key: Ident = input.parse()?;
            match key.to_string().as_str() {
                "decimal" => decimal = true,
                "unit" | "about" => {
                    input.parse::<Token![=]>()?;
                    let value: LitStr = input.parse()?;
                    let slot = if key == "unit" { &mut unit } else { &mut about };
                    if slot.replace(value).is_some() {
                        return Err(syn::Error::new(key.span(), format!("`{key}` given twice")));
                    }
                }
                other => {
                    return Err(syn::Error::new(
                        key.span(),
                        format!(
                            "unknown metric argument `{other}`: expected unit, about or decimal"
                        ),
                    ));
                }
            }
        }
        let unit = unit.ok_or_else(|| {
            syn::Error::new(
                name.span(),
                "a metric needs its unit: `unit = \"vCPU-hours\"`",
            )
        })?;
        for text in [&name, &friendly, &unit] {
            if text.value().trim().is_empty() {
                return Err(syn::Error::new(text.span(), "must not be empty"));
            }
        }
        Ok(MetricArgs {
            name,
            friendly,
            unit,
            about,
            decimal,
        })
    }
}

/// The doc comment of a method as one line, or `None` without one.
fn doc_comment(attrs: &[Attribute]) -> Option<LitStr> {
    let mut lines = Vec::new();
    let mut span = None;
    for attr in attrs {
        if let Meta::NameValue(pair) = &attr.meta
            && pair.path.is_ident("doc")
            && let Ok(text) = string(&pair.value)
        {
            span.get_or_insert(text.span());
            lines.push(text.value().trim().to_owned());
        }
    }
    let text = lines
        .iter()
        .map(String::as_str)
        .take_while(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    (!text.is_empty()).then(|| LitStr::new(&text, span.unwrap_or_else(Span::call_site)))
}

/// Whether `ty` is a `Result<…>` (by its last path segment).
fn is_result(ty: &Type) -> bool {
    match ty {
        Type::Path(path) => path
            .path
            .segments
            .last()
            .is_some_and(|segment| segment.ident == "Result"),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expanded(attr: TokenStream2, item: TokenStream2) -> String {
        expand(attr, item)
            .map(|t| t.to_string())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn error(attr: TokenStream2, item: TokenStream2) -> String {
        match expand(attr, item) {
            Ok(tokens) => panic!("expanded: {tokens}"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn a_method_of_the_increase_bills_it_and_reads_no_tags() {
        let text = expanded(
            quote!(),
            quote! {
                impl Flat {
                    /// Amount of vCPUs.
                    #[metric("project_vcpu_usage", "cpu", unit = "vCPU-hours")]
                    fn cpu(&self, increase: Decimal) -> Decimal { increase }
                }
            },
        );
        assert!(text.contains("\"project_vcpu_usage\" => :: core :: result :: Result :: Ok (Self :: cpu (self , usage . delta () ?))"), "{text}");
        assert!(text.contains("MetricInfo :: new (\"project_vcpu_usage\" , \"cpu\" , \"vCPU-hours\" , \"Amount of vCPUs.\")"), "{text}");
        assert!(text.contains(". reads_tags (& [])"), "{text}");
        assert!(
            text.contains("policy_name (env ! (\"CARGO_PKG_NAME\"))"),
            "{text}"
        );
        assert!(
            text.contains(":: pricing_sdk :: export_policy ! (Flat)"),
            "{text}"
        );
        assert!(
            !text.contains("# [metric"),
            "the attribute is consumed: {text}"
        );
        assert!(!text.contains("fn examples"), "{text}");
        assert!(!text.contains("Default for"), "{text}");
    }

    #[test]
    fn a_default_in_the_block_is_the_types_default() {
        let text = expanded(
            quote!(),
            quote! {
                impl Flat {
                    fn default() -> Self { Flat { price: Decimal::ONE } }
                    /// vCPUs.
                    #[metric("project_vcpu_usage", "cpu", unit = "vCPU-hours")]
                    fn cpu(&self, increase: Decimal) -> Decimal { increase * self.price }
                }
            },
        );
        assert!(text.contains("impl :: core :: default :: Default for Flat { fn default () -> Self { < Flat > :: default () } }"), "{text}");
    }

    #[test]
    fn a_method_of_the_step_returning_result_is_called_as_is_with_declared_tags() {
        let text = expanded(
            quote!(
                name = "flavors",
                version = "2.0.0",
                about = "by flavor",
                tags = ["flavor"]
            ),
            quote! {
                impl Flavors {
                    #[metric("project_vcpu_usage", "cpu", unit = "vCPU-hours", about = "vCPUs", decimal)]
                    fn cpu(&self, usage: &Usage) -> Result<Decimal, Error> { usage.delta() }
                    fn examples(&self) -> Vec<Example> { Vec::new() }
                }
            },
        );
        assert!(
            text.contains("\"project_vcpu_usage\" => Self :: cpu (self , usage) ,"),
            "{text}"
        );
        assert!(text.contains("MetricInfo :: decimal (\"project_vcpu_usage\" , \"cpu\" , \"vCPU-hours\" , \"vCPUs\")"), "{text}");
        assert!(
            text.contains("PolicyInfo :: new (\"flavors\" , \"2.0.0\" , \"by flavor\")"),
            "{text}"
        );
        assert!(text.contains(". reads_tags (& [\"flavor\"])"), "{text}");
        assert!(text.contains("fn examples (& self) -> :: std :: vec :: Vec < :: pricing_sdk :: Example > { < Flavors > :: examples (self) }"), "{text}");
    }

    #[test]
    fn a_method_of_the_step_without_declared_tags_gets_all_of_them() {
        let text = expanded(
            quote!(),
            quote! {
                impl P {
                    /// RAM.
                    #[metric("project_mb_usage", "ram", unit = "GiB-hours")]
                    fn ram(&self, usage: &pricing_sdk::Usage) -> Decimal { Decimal::ZERO }
                }
            },
        );
        assert!(!text.contains("reads_tags"), "{text}");
        assert!(text.contains("Ok (Self :: ram (self , usage))"), "{text}");
    }

    #[test]
    fn mistakes_are_named() {
        let cases = [
            (
                quote!(),
                quote!(impl P { fn f(&self) {} }),
                "prices at least one metric",
            ),
            (
                quote!(),
                quote!(impl Policy for P {}),
                "inherent impl block",
            ),
            (
                quote!(),
                quote!(
                    impl<T> P<T> {}
                ),
                "takes no generics",
            ),
            (
                quote!(colour = "red"),
                quote!(impl P {}),
                "unknown argument `colour`",
            ),
            (
                quote!(name = "a", name = "b"),
                quote!(impl P {}),
                "`name` given twice",
            ),
            (
                quote!(tags = "flavor"),
                quote!(impl P {}),
                "tags are a list",
            ),
            (
                quote!(name = 3),
                quote!(impl P {}),
                "expected a string literal",
            ),
            (
                quote!(),
                quote!(impl P { #[metric("m", "f")] fn f(&self, x: Decimal) -> Decimal { x } }),
                "needs its unit",
            ),
            (
                quote!(),
                quote!(impl P { #[metric("m", "f", unit = "u")] fn f(&self, x: Decimal) -> Decimal { x } }),
                "a doc comment on the method",
            ),
            (
                quote!(),
                quote!(impl P { #[metric("m", "f", unit = "u", about = "a", colour)] fn f(&self, x: Decimal) -> Decimal { x } }),
                "unknown metric argument `colour`",
            ),
            (
                quote!(),
                quote!(impl P { #[metric("m", "f", unit = "u", about = "a")] fn f(&mut self, x: Decimal) -> Decimal { x } }),
                "a metric method is",
            ),
            (
                quote!(),
                quote!(impl P { #[metric("m", "f", unit = "u", about = "a")] fn f(&self) -> Decimal { x } }),
                "a metric method is",
            ),
            (
                quote!(),
                quote!(impl P { #[metric("m", "f", unit = "u", about = "a")] fn f(&self, x: Decimal) { } }),
                "a metric method is",
            ),
            (
                quote!(),
                quote!(impl P {
                    #[metric("m", "f", unit = "u", about = "a")] fn f(&self, x: Decimal) -> Decimal { x }
                    #[metric("m", "g", unit = "u", about = "a")] fn g(&self, x: Decimal) -> Decimal { x }
                }),
                "metric \"m\" is priced twice",
            ),
            (
                quote!(),
                quote!(impl P { #[metric(unit = "u")] fn f(&self, x: Decimal) -> Decimal { x } }),
                "expected #[metric(\"measurement\"",
            ),
        ];
        for (attr, item, expected) in cases {
            let message = error(attr, item.clone());
            assert!(message.contains(expected), "{item}: {message}");
        }
    }

    #[test]
    fn a_doc_comment_becomes_one_line_up_to_its_first_blank_line() {
        let method: ImplItemFn = syn::parse_quote! {
            /// Amount of
            /// vCPUs.
            ///
            /// Not this.
            fn f(&self) {}
        };
        assert_eq!(
            doc_comment(&method.attrs).unwrap().value(),
            "Amount of vCPUs."
        );
    }
}
