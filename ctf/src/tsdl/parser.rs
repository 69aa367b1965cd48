//! Recursive descent over the tokens. Types are resolved while parsing (aliases are looked
//! up in a stack of scopes), so the result holds no names to resolve later except variant
//! tags and sequence lengths, which refer to decoded values.

use std::collections::{BTreeMap, HashMap};

use uuid::Uuid;

use super::lexer::{Tok, Token};
use super::{
    ByteOrder, ClockClass, Encoding, EnumClass, EnumMapping, EnvValue, EventClass, FieldClass,
    FloatClass, IntClass, MAX_COPIED_NODES, MAX_DEPTH, Member, Metadata, StreamClass, StructClass,
    TsdlError, VariantClass,
};

/// Largest alignment accepted, in bits (larger ones only serve to make offsets overflow).
const MAX_ALIGN: u64 = 1 << 16;

/// Words that start a type specifier rather than name an alias.
const TYPE_KEYWORDS: [&str; 6] = [
    "integer",
    "floating_point",
    "string",
    "struct",
    "variant",
    "enum",
];

#[derive(Debug, Default)]
struct Scope {
    aliases: HashMap<String, FieldClass>,
    structs: HashMap<String, StructClass>,
    variants: HashMap<String, VariantClass>,
    enums: HashMap<String, EnumClass>,
}

/// A block entry's right-hand side.
#[derive(Debug)]
enum Rhs {
    Value(Value),
    Type(FieldClass),
}

/// An attribute value: `= 12`, `= "text"`, `= le`, `= clock.monotonic.value`.
#[derive(Debug, Clone)]
enum Value {
    Int(i128),
    Str(String),
    Path(String),
}

#[derive(Debug)]
struct Entry {
    name: String,
    rhs: Rhs,
    line: u32,
}

pub(crate) struct Parser {
    toks: Vec<Token>,
    pos: usize,
    depth: usize,
    scopes: Vec<Scope>,
    byte_order: ByteOrder,
    /// Type nodes created by copying aliases and named types so far.
    copied_nodes: usize,
    trace_seen: bool,
    md: Metadata,
    events: Vec<(EventClass, Option<u64>, u32)>,
}

type R<T> = Result<T, TsdlError>;

impl Parser {
    pub(crate) fn new(toks: Vec<Token>) -> Self {
        let byte_order = prescan_byte_order(&toks);
        Self {
            toks,
            pos: 0,
            depth: 0,
            scopes: vec![Scope::default()],
            byte_order,
            copied_nodes: 0,
            trace_seen: false,
            md: Metadata {
                major: 1,
                minor: 8,
                uuid: None,
                byte_order,
                packet_header: None,
                env: Vec::new(),
                clocks: Vec::new(),
                streams: BTreeMap::new(),
            },
            events: Vec::new(),
        }
    }

    pub(crate) fn parse(mut self) -> R<Metadata> {
        while self.pos < self.toks.len() {
            self.top_level()?;
        }
        self.finish()
    }

    // ---- token helpers ----

    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|t| &t.tok)
    }

    fn peek_at(&self, n: usize) -> Option<&Tok> {
        self.toks.get(self.pos + n).map(|t| &t.tok)
    }

    fn line(&self) -> u32 {
        self.toks
            .get(self.pos)
            .or_else(|| self.toks.last())
            .map_or(1, |t| t.line)
    }

    fn err<T>(&self, msg: impl Into<String>) -> R<T> {
        Err(TsdlError::new(self.line(), msg))
    }

    fn describe(&self) -> String {
        match self.peek() {
            None => "end of metadata".into(),
            Some(Tok::Word(w)) => format!("'{w}'"),
            Some(Tok::Int(i)) => format!("'{i}'"),
            Some(Tok::Str(s)) => format!("string {s:?}"),
            Some(Tok::Punct(p)) => format!("'{p}'"),
        }
    }

    fn is_punct(&self, p: &str) -> bool {
        matches!(self.peek(), Some(Tok::Punct(q)) if *q == p)
    }

    fn is_word(&self, w: &str) -> bool {
        matches!(self.peek(), Some(Tok::Word(x)) if x == w)
    }

    fn eat_punct(&mut self, p: &str) -> bool {
        if self.is_punct(p) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect_punct(&mut self, p: &str) -> R<()> {
        if self.eat_punct(p) {
            Ok(())
        } else {
            self.err(format!("expected '{p}', found {}", self.describe()))
        }
    }

    fn word(&mut self) -> R<String> {
        match self.peek() {
            Some(Tok::Word(w)) => {
                let w = w.clone();
                self.pos += 1;
                Ok(w)
            }
            _ => self.err(format!("expected a name, found {}", self.describe())),
        }
    }

    fn unsigned(&mut self) -> R<u64> {
        match self.peek() {
            Some(Tok::Int(v)) => {
                let v = *v;
                self.pos += 1;
                Ok(v)
            }
            _ => self.err(format!("expected an integer, found {}", self.describe())),
        }
    }

    fn signed(&mut self) -> R<i128> {
        let neg = self.eat_punct("-");
        if !neg {
            self.eat_punct("+");
        }
        let v = i128::from(self.unsigned()?);
        Ok(if neg { -v } else { v })
    }

    /// `word(.word)*`
    fn path(&mut self) -> R<String> {
        let mut p = self.word()?;
        while self.is_punct(".") || self.is_punct("->") {
            self.pos += 1;
            p.push('.');
            p.push_str(&self.word()?);
        }
        Ok(p)
    }

    fn enter(&mut self) -> R<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return self.err(format!("types nest deeper than {MAX_DEPTH} levels"));
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }

    // ---- top level ----

    fn top_level(&mut self) -> R<()> {
        let line = self.line();
        match self.peek() {
            Some(Tok::Punct(";")) => {
                self.pos += 1;
                Ok(())
            }
            Some(Tok::Word(w)) => match w.as_str() {
                "typealias" => self.typealias(),
                "typedef" => self.typedef(),
                "trace" if matches!(self.peek_at(1), Some(Tok::Punct("{"))) => {
                    self.pos += 1;
                    let entries = self.block()?;
                    self.trace(entries)
                }
                "env" if matches!(self.peek_at(1), Some(Tok::Punct("{"))) => {
                    self.pos += 1;
                    let entries = self.block()?;
                    self.env(entries)
                }
                "clock" if matches!(self.peek_at(1), Some(Tok::Punct("{"))) => {
                    self.pos += 1;
                    let entries = self.block()?;
                    self.clock(entries, line)
                }
                "stream" if matches!(self.peek_at(1), Some(Tok::Punct("{"))) => {
                    self.pos += 1;
                    let entries = self.block()?;
                    self.stream(entries, line)
                }
                "event" if matches!(self.peek_at(1), Some(Tok::Punct("{"))) => {
                    self.pos += 1;
                    let entries = self.block()?;
                    self.event(entries, line)
                }
                "struct" | "variant" | "enum" => {
                    // A named type declared on its own: `struct name { ... } align(8);`
                    self.type_spec()?;
                    self.expect_punct(";")
                }
                _ if matches!(self.peek_at(1), Some(Tok::Punct("{"))) => {
                    // An unknown block (`callsite`, a newer CTF's): skip it whole.
                    self.pos += 1;
                    self.skip_braces()?;
                    self.eat_punct(";");
                    Ok(())
                }
                _ => self.err(format!("unexpected {} at top level", self.describe())),
            },
            _ => self.err(format!("unexpected {} at top level", self.describe())),
        }
    }

    fn skip_braces(&mut self) -> R<()> {
        self.expect_punct("{")?;
        let mut depth = 1usize;
        while depth > 0 {
            match self.peek() {
                None => return self.err("unbalanced '{'"),
                Some(Tok::Punct("{")) => depth += 1,
                Some(Tok::Punct("}")) => depth -= 1,
                _ => {}
            }
            self.pos += 1;
        }
        Ok(())
    }

    /// `{ (name = value; | name := type; | typealias ...; | typedef ...;)* } ;`
    fn block(&mut self) -> R<Vec<Entry>> {
        self.enter()?;
        self.expect_punct("{")?;
        self.scopes.push(Scope::default());
        let mut entries = Vec::new();
        while !self.eat_punct("}") {
            let line = self.line();
            if self.is_word("typealias") {
                self.typealias()?;
                continue;
            }
            if self.is_word("typedef") {
                self.typedef()?;
                continue;
            }
            if self.eat_punct(";") {
                continue;
            }
            let name = self.path()?;
            let rhs = if self.eat_punct(":=") {
                Rhs::Type(self.type_until_semicolon()?)
            } else if self.eat_punct("=") {
                Rhs::Value(self.value()?)
            } else {
                return self.err(format!(
                    "expected '=' or ':=' after '{name}', found {}",
                    self.describe()
                ));
            };
            self.expect_punct(";")?;
            entries.push(Entry { name, rhs, line });
        }
        self.scopes.pop();
        self.expect_punct(";")?;
        self.leave();
        Ok(entries)
    }

    fn value(&mut self) -> R<Value> {
        match self.peek() {
            Some(Tok::Str(s)) => {
                let s = s.clone();
                self.pos += 1;
                Ok(Value::Str(s))
            }
            Some(Tok::Int(_) | Tok::Punct("-" | "+")) => Ok(Value::Int(self.signed()?)),
            Some(Tok::Word(_)) => Ok(Value::Path(self.path()?)),
            _ => self.err(format!("expected a value, found {}", self.describe())),
        }
    }

    /// After `:=`: a type specifier, or an alias name running up to the `;`.
    fn type_until_semicolon(&mut self) -> R<FieldClass> {
        if self.starts_type_spec() {
            return self.type_spec();
        }
        let words = self.words()?;
        self.lookup_alias(&words)
    }

    fn starts_type_spec(&self) -> bool {
        matches!(self.peek(), Some(Tok::Word(w)) if TYPE_KEYWORDS.contains(&w.as_str()))
    }

    /// Consecutive words (`unsigned long`), skipping `const`.
    fn words(&mut self) -> R<Vec<String>> {
        let mut words = Vec::new();
        while let Some(Tok::Word(w)) = self.peek() {
            if w != "const" {
                words.push(w.clone());
            }
            self.pos += 1;
        }
        if words.is_empty() {
            return self.err(format!("expected a type, found {}", self.describe()));
        }
        Ok(words)
    }

    fn lookup_alias(&mut self, words: &[String]) -> R<FieldClass> {
        let name = words.join(" ");
        let class = self
            .scopes
            .iter()
            .rev()
            .find_map(|s| s.aliases.get(&name))
            .cloned()
            .map_or_else(|| self.err(format!("unknown type '{name}'")), Ok)?;
        self.copied(class.nodes())?;
        Ok(class)
    }

    /// Counts the nodes of a copied type against [`MAX_COPIED_NODES`].
    fn copied(&mut self, nodes: usize) -> R<()> {
        self.copied_nodes = self.copied_nodes.saturating_add(nodes);
        if self.copied_nodes > MAX_COPIED_NODES {
            return self.err(format!(
                "type aliases expand to more than {MAX_COPIED_NODES} type nodes"
            ));
        }
        Ok(())
    }

    /// Refuses a type nested deeper than [`MAX_DEPTH`] (aliases of arrays of aliases can
    /// nest types without nesting the text).
    fn check_depth(&self, class: FieldClass) -> R<FieldClass> {
        if class.depth() > MAX_DEPTH {
            return self.err(format!("types nest deeper than {MAX_DEPTH} levels"));
        }
        Ok(class)
    }

    // ---- type declarations ----

    /// `typealias <type> [dims] := <name words>;`
    fn typealias(&mut self) -> R<()> {
        self.pos += 1;
        let mut class = if self.starts_type_spec() {
            self.type_spec()?
        } else {
            let words = self.words()?;
            self.lookup_alias(&words)?
        };
        class = self.dimensions(class)?;
        self.expect_punct(":=")?;
        let name = self.words()?.join(" ");
        self.expect_punct(";")?;
        self.register_alias(name, class);
        Ok(())
    }

    /// `typedef <type> name [dims], ...;`
    fn typedef(&mut self) -> R<()> {
        self.pos += 1;
        let (class, first) = self.type_and_first_name()?;
        let mut name = first;
        loop {
            let copy = self.dimensions(class.clone())?;
            self.register_alias(name, copy);
            if self.eat_punct(",") {
                // Each further declarator is one more copy of the type.
                self.copied(class.nodes())?;
                name = self.word()?;
            } else {
                break;
            }
        }
        self.expect_punct(";")
    }

    fn register_alias(&mut self, name: String, class: FieldClass) {
        if let Some(scope) = self.scopes.last_mut() {
            scope.aliases.insert(name, class);
        }
    }

    /// A type followed by a declarator name: `uint32_t x`, `unsigned long x`,
    /// `struct { ... } x`, `struct name x`.
    fn type_and_first_name(&mut self) -> R<(FieldClass, String)> {
        if self.starts_type_spec() {
            let class = self.type_spec()?;
            let name = self.word()?;
            Ok((class, name))
        } else {
            let mut words = self.words()?;
            if words.len() < 2 {
                return self.err(format!(
                    "expected a type and a name, found only '{}'",
                    words.join(" ")
                ));
            }
            let name = words.pop().unwrap_or_default();
            Ok((self.lookup_alias(&words)?, name))
        }
    }

    /// Array and sequence suffixes: `[16]`, `[len]`, `[2][3]`.
    fn dimensions(&mut self, element: FieldClass) -> R<FieldClass> {
        enum Dim {
            Fixed(u64),
            Dynamic(String),
        }
        let mut dims = Vec::new();
        while self.eat_punct("[") {
            let dim = match self.peek() {
                Some(Tok::Int(_)) => Dim::Fixed(self.unsigned()?),
                Some(Tok::Word(_)) => Dim::Dynamic(self.path()?),
                _ => {
                    return self.err(format!(
                        "expected an array length, found {}",
                        self.describe()
                    ));
                }
            };
            self.expect_punct("]")?;
            dims.push(dim);
        }
        if dims.len() > MAX_DEPTH {
            return self.err(format!("more than {MAX_DEPTH} array dimensions"));
        }
        if dims.is_empty() {
            return Ok(element);
        }
        // `a[2][3]` is two arrays of three: wrap from the last dimension outwards.
        let class = dims
            .into_iter()
            .rev()
            .fold(element, |element, dim| match dim {
                Dim::Fixed(length) => FieldClass::Array {
                    element: Box::new(element),
                    length,
                },
                Dim::Dynamic(length) => FieldClass::Sequence {
                    element: Box::new(element),
                    length,
                },
            });
        self.check_depth(class)
    }

    fn type_spec(&mut self) -> R<FieldClass> {
        self.enter()?;
        let word = self.word()?;
        let class = match word.as_str() {
            "integer" => FieldClass::Int(self.integer()?),
            "floating_point" => FieldClass::Float(self.floating_point()?),
            "string" => {
                let mut encoding = Encoding::Utf8;
                if self.is_punct("{") {
                    for (name, value, line) in self.attributes()? {
                        if name == "encoding" {
                            encoding = encoding_value(&value, line)?;
                        }
                    }
                }
                FieldClass::String(encoding)
            }
            // Aliases of arrays of aliases can nest types without nesting the text.
            "struct" => {
                let class = FieldClass::Struct(self.struct_spec()?);
                self.check_depth(class)?
            }
            "variant" => {
                let class = FieldClass::Variant(self.variant_spec()?);
                self.check_depth(class)?
            }
            "enum" => FieldClass::Enum(self.enum_spec()?),
            _ => return self.err(format!("unknown type specifier '{word}'")),
        };
        self.leave();
        Ok(class)
    }

    /// `{ name = value; ... }` as in `integer { ... }`.
    fn attributes(&mut self) -> R<Vec<(String, Value, u32)>> {
        self.expect_punct("{")?;
        let mut out = Vec::new();
        while !self.eat_punct("}") {
            if self.eat_punct(";") {
                continue;
            }
            let line = self.line();
            let name = self.path()?;
            self.expect_punct("=")?;
            let value = self.value()?;
            out.push((name, value, line));
            if !self.is_punct("}") {
                self.expect_punct(";")?;
            }
        }
        Ok(out)
    }

    fn integer(&mut self) -> R<IntClass> {
        let line = self.line();
        let mut size = None;
        let mut align = None;
        let mut class = IntClass {
            size: 0,
            align: 0,
            signed: false,
            byte_order: self.byte_order,
            base: 10,
            encoding: Encoding::None,
            clock: None,
        };
        for (name, value, line) in self.attributes()? {
            match name.as_str() {
                "size" => size = Some(int_value(&value, line, "size")?),
                "align" => align = Some(int_value(&value, line, "align")?),
                "signed" => class.signed = bool_value(&value, line)?,
                "byte_order" => class.byte_order = self.byte_order_value(&value, line)?,
                "base" => class.base = base_value(&value, line)?,
                "encoding" => class.encoding = encoding_value(&value, line)?,
                "map" => class.clock = Some(clock_map(&value, line)?),
                _ => {}
            }
        }
        let size = size.ok_or_else(|| TsdlError::new(line, "integer has no size"))?;
        if !(1..=64).contains(&size) {
            return Err(TsdlError::new(
                line,
                format!("integer size {size} is not between 1 and 64"),
            ));
        }
        class.size = u32::try_from(size).unwrap_or(64);
        class.align = check_align(align.unwrap_or(if size % 8 == 0 { 8 } else { 1 }), line)?;
        Ok(class)
    }

    fn floating_point(&mut self) -> R<FloatClass> {
        let line = self.line();
        let mut exp = None;
        let mut mant = None;
        let mut align = None;
        let mut byte_order = self.byte_order;
        for (name, value, line) in self.attributes()? {
            match name.as_str() {
                "exp_dig" => exp = Some(int_value(&value, line, "exp_dig")?),
                "mant_dig" => mant = Some(int_value(&value, line, "mant_dig")?),
                "align" => align = Some(int_value(&value, line, "align")?),
                "byte_order" => byte_order = self.byte_order_value(&value, line)?,
                _ => {}
            }
        }
        let (exp_dig, mant_dig) = match (exp, mant) {
            (Some(8), Some(24)) => (8, 24),
            (Some(11), Some(53)) => (11, 53),
            (e, m) => {
                return Err(TsdlError::new(
                    line,
                    format!(
                        "unsupported floating point (exp_dig {}, mant_dig {}): only 32 and 64-bit IEEE 754 are read",
                        e.map_or("missing".into(), |v| v.to_string()),
                        m.map_or("missing".into(), |v| v.to_string())
                    ),
                ));
            }
        };
        Ok(FloatClass {
            exp_dig,
            mant_dig,
            align: check_align(align.unwrap_or(8), line)?,
            byte_order,
        })
    }

    fn byte_order_value(&self, value: &Value, line: u32) -> R<ByteOrder> {
        match value {
            Value::Path(p) | Value::Str(p) => match p.as_str() {
                "le" | "little" | "little_endian" => Ok(ByteOrder::Little),
                "be" | "big" | "big_endian" | "network" => Ok(ByteOrder::Big),
                "native" => Ok(self.byte_order),
                other => Err(TsdlError::new(
                    line,
                    format!("unknown byte order '{other}'"),
                )),
            },
            Value::Int(_) => Err(TsdlError::new(line, "byte order must be a name")),
        }
    }

    /// `struct [name] [{ members }] [align(N)]`
    fn struct_spec(&mut self) -> R<StructClass> {
        let name = match self.peek() {
            Some(Tok::Word(_)) if !self.is_word("align") => Some(self.word()?),
            _ => None,
        };
        let mut class = if self.is_punct("{") {
            let members = self.members()?;
            let align = members.iter().map(|m| m.class.align()).max().unwrap_or(1);
            StructClass { align, members }
        } else {
            let Some(name) = &name else {
                return self.err("struct without a name or a body");
            };
            let found = self
                .scopes
                .iter()
                .rev()
                .find_map(|s| s.structs.get(name))
                .cloned()
                .map_or_else(|| self.err(format!("unknown struct '{name}'")), Ok)?;
            self.copied(1 + found.members.iter().map(|m| m.class.nodes()).sum::<usize>())?;
            found
        };
        if self.is_word("align") && matches!(self.peek_at(1), Some(Tok::Punct("("))) {
            self.pos += 2;
            let line = self.line();
            let a = check_align(self.unsigned()?, line)?;
            self.expect_punct(")")?;
            class.align = class.align.max(a);
        }
        if let (Some(name), Some(scope)) = (name, self.scopes.last_mut()) {
            scope.structs.entry(name).or_insert_with(|| class.clone());
        }
        Ok(class)
    }

    /// `{ (type name [dims], ...;)* }`, also for variant options.
    fn members(&mut self) -> R<Vec<Member>> {
        self.expect_punct("{")?;
        self.scopes.push(Scope::default());
        let mut members: Vec<Member> = Vec::new();
        while !self.eat_punct("}") {
            if self.eat_punct(";") {
                continue;
            }
            if self.is_word("typealias") {
                self.typealias()?;
                continue;
            }
            if self.is_word("typedef") {
                self.typedef()?;
                continue;
            }
            let (class, first) = if self.starts_type_spec() {
                let class = self.type_spec()?;
                // A named type declared inside a structure, with no member: `struct x {...};`
                if self.eat_punct(";") {
                    continue;
                }
                let name = self.word()?;
                (class, name)
            } else {
                self.type_and_first_name()?
            };
            let mut name = first;
            let nodes = class.nodes();
            loop {
                let line = self.line();
                let class = self.dimensions(class.clone())?;
                if members.iter().any(|m| m.name == name) {
                    return Err(TsdlError::new(line, format!("duplicate member '{name}'")));
                }
                members.push(Member {
                    name,
                    class,
                    hidden: false,
                });
                if self.eat_punct(",") {
                    // Each further declarator is one more copy of the type.
                    self.copied(nodes)?;
                    name = self.word()?;
                } else {
                    break;
                }
            }
            self.expect_punct(";")?;
        }
        self.scopes.pop();
        // A sequence's length member right before it in the same structure is part of the
        // sequence's value, not a field of its own.
        for j in 0..members.len() {
            let FieldClass::Sequence { length, .. } = &members[j].class else {
                continue;
            };
            if length.contains('.') {
                continue;
            }
            if let Some(i) = members[..j].iter().position(|m| &m.name == length) {
                if matches!(members[i].class, FieldClass::Int(_) | FieldClass::Enum(_)) {
                    members[i].hidden = true;
                }
            }
        }
        Ok(members)
    }

    /// `variant [name] [<tag>] [{ options }]`
    fn variant_spec(&mut self) -> R<VariantClass> {
        let name = match self.peek() {
            Some(Tok::Word(_)) => Some(self.word()?),
            _ => None,
        };
        let tag = if self.eat_punct("<") {
            let t = self.path()?;
            self.expect_punct(">")?;
            Some(t)
        } else {
            None
        };
        if self.is_punct("{") {
            let options = self.members()?;
            let class = VariantClass { tag, options };
            if let (Some(name), Some(scope)) = (name, self.scopes.last_mut()) {
                scope.variants.entry(name).or_insert_with(|| VariantClass {
                    tag: None,
                    options: class.options.clone(),
                });
            }
            return Ok(class);
        }
        let Some(name) = name else {
            return self.err("variant without a name or a body");
        };
        let mut class = self
            .scopes
            .iter()
            .rev()
            .find_map(|s| s.variants.get(&name))
            .cloned()
            .map_or_else(|| self.err(format!("unknown variant '{name}'")), Ok)?;
        self.copied(1 + class.options.iter().map(|o| o.class.nodes()).sum::<usize>())?;
        if tag.is_some() {
            class.tag = tag;
        }
        Ok(class)
    }

    /// `enum [name] [: container] [{ label [= value [... value]], ... }]`
    fn enum_spec(&mut self) -> R<EnumClass> {
        let name = match self.peek() {
            Some(Tok::Word(_)) => Some(self.word()?),
            _ => None,
        };
        let container = if self.eat_punct(":") {
            let line = self.line();
            let class = if self.starts_type_spec() {
                self.type_spec()?
            } else {
                let mut words = Vec::new();
                while let Some(Tok::Word(w)) = self.peek() {
                    words.push(w.clone());
                    self.pos += 1;
                }
                self.lookup_alias(&words)?
            };
            match class {
                FieldClass::Int(i) => Some(i),
                _ => return Err(TsdlError::new(line, "enum container is not an integer")),
            }
        } else {
            None
        };
        if !self.is_punct("{") {
            let Some(name) = name else {
                return self.err("enum without a name or a body");
            };
            let class = self
                .scopes
                .iter()
                .rev()
                .find_map(|s| s.enums.get(&name))
                .cloned()
                .map_or_else(|| self.err(format!("unknown enum '{name}'")), Ok)?;
            self.copied(1 + class.mappings.len())?;
            return Ok(class);
        }
        let container = match container {
            Some(c) => c,
            // CTF: an enum without a container type uses the `int` alias.
            None => match self.lookup_alias(&["int".to_owned()])? {
                FieldClass::Int(i) => i,
                _ => return self.err("enum container 'int' is not an integer"),
            },
        };
        self.expect_punct("{")?;
        let mut mappings = Vec::new();
        let mut next = 0i128;
        while !self.eat_punct("}") {
            let label = match self.peek() {
                Some(Tok::Str(s)) => {
                    let s = s.clone();
                    self.pos += 1;
                    s
                }
                _ => self.word()?,
            };
            let (low, high) = if self.eat_punct("=") {
                let low = self.signed()?;
                let high = if self.eat_punct("...") {
                    self.signed()?
                } else {
                    low
                };
                (low, high)
            } else {
                (next, next)
            };
            if high < low {
                return self.err(format!("enum range {low} ... {high} is empty"));
            }
            next = high.saturating_add(1);
            mappings.push(EnumMapping { label, low, high });
            if !self.eat_punct(",") {
                self.expect_punct("}")?;
                break;
            }
        }
        let class = EnumClass {
            container,
            mappings,
        };
        if let (Some(name), Some(scope)) = (name, self.scopes.last_mut()) {
            scope.enums.entry(name).or_insert_with(|| class.clone());
        }
        Ok(class)
    }

    // ---- blocks ----

    fn trace(&mut self, entries: Vec<Entry>) -> R<()> {
        if self.trace_seen {
            return Err(TsdlError::new(
                entries.first().map_or(self.line(), |e| e.line),
                "second trace block",
            ));
        }
        self.trace_seen = true;
        for e in entries {
            match (e.name.as_str(), e.rhs) {
                ("major", Rhs::Value(v)) => self.md.major = int_value(&v, e.line, "major")?,
                ("minor", Rhs::Value(v)) => self.md.minor = int_value(&v, e.line, "minor")?,
                ("uuid", Rhs::Value(v)) => self.md.uuid = Some(uuid_value(&v, e.line)?),
                ("byte_order", Rhs::Value(v)) => {
                    self.md.byte_order = self.byte_order_value(&v, e.line)?;
                }
                ("packet.header", Rhs::Type(t)) => self.md.packet_header = Some(t),
                _ => {}
            }
        }
        if self.md.major != 1 {
            return self.err(format!("CTF major version {} is not 1", self.md.major));
        }
        Ok(())
    }

    fn env(&mut self, entries: Vec<Entry>) -> R<()> {
        for e in entries {
            let value = match e.rhs {
                Rhs::Value(Value::Int(i)) => EnvValue::Int(i64::try_from(i).map_err(|_| {
                    TsdlError::new(e.line, format!("env value {i} is out of range"))
                })?),
                Rhs::Value(Value::Str(s) | Value::Path(s)) => EnvValue::Str(s),
                Rhs::Type(_) => continue,
            };
            self.md.env.retain(|(k, _)| *k != e.name);
            self.md.env.push((e.name, value));
        }
        Ok(())
    }

    fn clock(&mut self, entries: Vec<Entry>, line: u32) -> R<()> {
        let mut c = ClockClass {
            name: String::new(),
            uuid: None,
            description: None,
            freq: 1_000_000_000,
            offset_s: 0,
            offset: 0,
            precision: 0,
            absolute: false,
        };
        for e in entries {
            let Rhs::Value(v) = e.rhs else { continue };
            match e.name.as_str() {
                "name" => {
                    c.name = match v {
                        Value::Str(s) | Value::Path(s) => s,
                        Value::Int(_) => {
                            return Err(TsdlError::new(e.line, "clock name is a number"));
                        }
                    }
                }
                "uuid" => c.uuid = Some(uuid_value(&v, e.line)?),
                "description" => {
                    if let Value::Str(s) = v {
                        c.description = Some(s);
                    }
                }
                "freq" => c.freq = int_value(&v, e.line, "freq")?,
                "offset_s" => {
                    c.offset_s = match v {
                        Value::Int(i) => i64::try_from(i).map_err(|_| {
                            TsdlError::new(e.line, format!("offset_s {i} is out of range"))
                        })?,
                        _ => return Err(TsdlError::new(e.line, "offset_s is not an integer")),
                    }
                }
                "offset" => c.offset = int_value(&v, e.line, "offset")?,
                "precision" => c.precision = int_value(&v, e.line, "precision")?,
                "absolute" => c.absolute = bool_value(&v, e.line)?,
                _ => {}
            }
        }
        if c.name.is_empty() {
            return Err(TsdlError::new(line, "clock has no name"));
        }
        if c.freq == 0 {
            return Err(TsdlError::new(
                line,
                format!("clock '{}' has frequency 0", c.name),
            ));
        }
        if self.md.clock(&c.name).is_some() {
            return Err(TsdlError::new(
                line,
                format!("clock '{}' declared twice", c.name),
            ));
        }
        self.md.clocks.push(c);
        Ok(())
    }

    fn stream(&mut self, entries: Vec<Entry>, line: u32) -> R<()> {
        let mut s = StreamClass {
            id: 0,
            packet_context: None,
            event_header: None,
            event_context: None,
            events: BTreeMap::new(),
        };
        for e in entries {
            match (e.name.as_str(), e.rhs) {
                ("id", Rhs::Value(v)) => s.id = int_value(&v, e.line, "stream id")?,
                ("packet.context", Rhs::Type(t)) => s.packet_context = Some(t),
                ("event.header", Rhs::Type(t)) => s.event_header = Some(t),
                ("event.context", Rhs::Type(t)) => s.event_context = Some(t),
                _ => {}
            }
        }
        if self.md.streams.contains_key(&s.id) {
            return Err(TsdlError::new(
                line,
                format!("stream {} declared twice", s.id),
            ));
        }
        self.md.streams.insert(s.id, s);
        Ok(())
    }

    fn event(&mut self, entries: Vec<Entry>, line: u32) -> R<()> {
        let mut ev = EventClass {
            name: String::new(),
            id: 0,
            stream_id: 0,
            loglevel: None,
            context: None,
            fields: None,
        };
        let mut stream_id = None;
        for e in entries {
            match (e.name.as_str(), e.rhs) {
                ("name", Rhs::Value(Value::Str(s) | Value::Path(s))) => ev.name = s,
                ("id", Rhs::Value(v)) => ev.id = int_value(&v, e.line, "event id")?,
                ("stream_id", Rhs::Value(v)) => {
                    stream_id = Some(int_value(&v, e.line, "stream_id")?);
                }
                ("loglevel", Rhs::Value(Value::Int(i))) => {
                    ev.loglevel = i64::try_from(i).ok();
                }
                ("context", Rhs::Type(t)) => ev.context = Some(t),
                ("fields", Rhs::Type(t)) => ev.fields = Some(t),
                _ => {}
            }
        }
        self.events.push((ev, stream_id, line));
        Ok(())
    }

    fn finish(mut self) -> R<Metadata> {
        if !self.trace_seen {
            return Err(TsdlError::new(1, "no trace block"));
        }
        for (mut ev, stream_id, line) in std::mem::take(&mut self.events) {
            let sid = match stream_id {
                Some(s) => s,
                None => match self.md.streams.len() {
                    0 => 0,
                    1 => self.md.streams.keys().next().copied().unwrap_or(0),
                    _ => {
                        return Err(TsdlError::new(
                            line,
                            format!("event '{}' names no stream and there are several", ev.name),
                        ));
                    }
                },
            };
            ev.stream_id = sid;
            if self.md.streams.is_empty() && sid == 0 {
                // CTF allows a trace without stream blocks: one implicit stream class.
                self.md.streams.insert(
                    0,
                    StreamClass {
                        id: 0,
                        packet_context: None,
                        event_header: None,
                        event_context: None,
                        events: BTreeMap::new(),
                    },
                );
            }
            let Some(stream) = self.md.streams.get_mut(&sid) else {
                return Err(TsdlError::new(
                    line,
                    format!("event '{}' names unknown stream {sid}", ev.name),
                ));
            };
            if stream.events.contains_key(&ev.id) {
                return Err(TsdlError::new(
                    line,
                    format!("event id {} declared twice in stream {sid}", ev.id),
                ));
            }
            stream.events.insert(ev.id, ev);
        }
        // Clock mappings may name a clock declared later; check them once everything is in.
        let mut classes: Vec<&FieldClass> = self.md.packet_header.iter().collect();
        for s in self.md.streams.values() {
            classes.extend(s.packet_context.iter());
            classes.extend(s.event_header.iter());
            classes.extend(s.event_context.iter());
            for e in s.events.values() {
                classes.extend(e.context.iter());
                classes.extend(e.fields.iter());
            }
        }
        for class in classes {
            if let Some(clock) = unknown_clock(class, &self.md) {
                return Err(TsdlError::new(
                    1,
                    format!("integer mapped to unknown clock '{clock}'"),
                ));
            }
        }
        Ok(self.md)
    }
}

fn unknown_clock<'a>(class: &'a FieldClass, md: &Metadata) -> Option<&'a str> {
    match class {
        FieldClass::Int(i) => i.clock.as_deref().filter(|c| md.clock(c).is_none()),
        FieldClass::Enum(e) => e
            .container
            .clock
            .as_deref()
            .filter(|c| md.clock(c).is_none()),
        FieldClass::Struct(s) => s.members.iter().find_map(|m| unknown_clock(&m.class, md)),
        FieldClass::Variant(v) => v.options.iter().find_map(|m| unknown_clock(&m.class, md)),
        FieldClass::Array { element, .. } | FieldClass::Sequence { element, .. } => {
            unknown_clock(element, md)
        }
        FieldClass::Float(_) | FieldClass::String(_) => None,
    }
}

/// The trace's byte order, which `native` integers declared before the trace block use:
/// found by scanning for `trace { ... byte_order = X; ... }` before parsing.
fn prescan_byte_order(toks: &[Token]) -> ByteOrder {
    let mut i = 0;
    while i + 1 < toks.len() {
        if toks[i].tok == Tok::Word("trace".into()) && toks[i + 1].tok == Tok::Punct("{") {
            let mut depth = 0usize;
            let mut j = i + 1;
            while j < toks.len() {
                match &toks[j].tok {
                    Tok::Punct("{") => depth += 1,
                    Tok::Punct("}") => {
                        depth = depth.saturating_sub(1);
                        if depth == 0 {
                            break;
                        }
                    }
                    Tok::Word(w) if depth == 1 && w == "byte_order" => {
                        if let (Some(Tok::Punct("=")), Some(Tok::Word(v))) = (
                            toks.get(j + 1).map(|t| &t.tok),
                            toks.get(j + 2).map(|t| &t.tok),
                        ) {
                            return match v.as_str() {
                                "be" | "big" | "network" => ByteOrder::Big,
                                _ => ByteOrder::Little,
                            };
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            return ByteOrder::Little;
        }
        i += 1;
    }
    ByteOrder::Little
}

fn int_value(v: &Value, line: u32, what: &str) -> R<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i)
            .map_err(|_| TsdlError::new(line, format!("{what} {i} is out of range"))),
        _ => Err(TsdlError::new(line, format!("{what} is not an integer"))),
    }
}

fn bool_value(v: &Value, line: u32) -> R<bool> {
    match v {
        Value::Int(0) => Ok(false),
        Value::Int(1) => Ok(true),
        Value::Path(p) | Value::Str(p) => match p.as_str() {
            "true" | "TRUE" | "True" => Ok(true),
            "false" | "FALSE" | "False" => Ok(false),
            other => Err(TsdlError::new(line, format!("'{other}' is not a boolean"))),
        },
        Value::Int(i) => Err(TsdlError::new(line, format!("{i} is not a boolean"))),
    }
}

fn base_value(v: &Value, line: u32) -> R<u32> {
    match v {
        Value::Int(i @ (2 | 8 | 10 | 16)) => Ok(u32::try_from(*i).unwrap_or(10)),
        Value::Path(p) | Value::Str(p) => match p.as_str() {
            "decimal" | "dec" | "d" | "i" | "u" => Ok(10),
            "hexadecimal" | "hex" | "x" | "X" | "p" => Ok(16),
            "octal" | "oct" | "o" => Ok(8),
            "binary" | "b" => Ok(2),
            other => Err(TsdlError::new(
                line,
                format!("unknown integer base '{other}'"),
            )),
        },
        Value::Int(i) => Err(TsdlError::new(line, format!("unknown integer base {i}"))),
    }
}

fn encoding_value(v: &Value, line: u32) -> R<Encoding> {
    match v {
        Value::Path(p) | Value::Str(p) => match p.to_ascii_lowercase().as_str() {
            "none" => Ok(Encoding::None),
            "utf8" => Ok(Encoding::Utf8),
            "ascii" => Ok(Encoding::Ascii),
            _ => Err(TsdlError::new(line, format!("unknown encoding '{p}'"))),
        },
        Value::Int(_) => Err(TsdlError::new(line, "encoding must be a name")),
    }
}

fn clock_map(v: &Value, line: u32) -> R<String> {
    if let Value::Path(p) = v {
        let parts: Vec<&str> = p.split('.').collect();
        if let ["clock", name, "value"] = parts.as_slice() {
            return Ok((*name).to_owned());
        }
    }
    Err(TsdlError::new(
        line,
        "map must be clock.NAME.value".to_string(),
    ))
}

fn uuid_value(v: &Value, line: u32) -> R<Uuid> {
    match v {
        Value::Str(s) => {
            Uuid::parse_str(s).map_err(|_| TsdlError::new(line, format!("bad uuid \"{s}\"")))
        }
        _ => Err(TsdlError::new(line, "uuid is not a string")),
    }
}

fn check_align(a: u64, line: u32) -> R<u32> {
    if a == 0 || !a.is_power_of_two() || a > MAX_ALIGN {
        return Err(TsdlError::new(
            line,
            format!("alignment {a} is not a power of two up to {MAX_ALIGN}"),
        ));
    }
    Ok(u32::try_from(a).unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::super::parse;
    use super::*;

    const ALIASES: &str = "
        typealias integer { size = 8; align = 8; signed = false; } := uint8_t;
        typealias integer { size = 32; align = 8; signed = false; } := uint32_t;
        typealias integer { size = 32; align = 8; signed = true; } := int;
    ";

    fn md(body: &str) -> Metadata {
        parse(&format!(
            "/* CTF 1.8 */{ALIASES}\ntrace {{ major = 1; minor = 8; byte_order = le; }};\n{body}"
        ))
        .unwrap()
    }

    fn err(body: &str) -> String {
        parse(&format!(
            "{ALIASES}\ntrace {{ major = 1; minor = 8; byte_order = le; }};\n{body}"
        ))
        .unwrap_err()
        .to_string()
    }

    fn fields(m: &Metadata) -> &StructClass {
        match m.streams[&0].events[&0].fields.as_ref().unwrap() {
            FieldClass::Struct(s) => s,
            other => panic!("not a struct: {other:?}"),
        }
    }

    #[test]
    fn byte_order_is_prescanned_for_earlier_aliases() {
        let m = parse(
            "typealias integer { size = 16; } := u16;
             trace { major = 1; minor = 8; byte_order = be; packet.header := struct { u16 a; }; };",
        )
        .unwrap();
        let FieldClass::Struct(s) = m.packet_header.unwrap() else {
            panic!()
        };
        let FieldClass::Int(i) = &s.members[0].class else {
            panic!()
        };
        assert_eq!(i.byte_order, ByteOrder::Big);
        assert_eq!(i.align, 8);
        assert_eq!(m.byte_order, ByteOrder::Big);
    }

    #[test]
    fn arrays_sequences_and_hidden_lengths() {
        let m = md("event { name = e; fields := struct {
                uint32_t _n;
                uint8_t _d[_n];
                int grid[2][3], other;
                uint8_t _m[event.fields._n];
            }; };");
        let s = fields(&m);
        assert_eq!(s.members.len(), 5);
        assert!(s.members[0].hidden);
        assert!(!s.members[2].hidden);
        assert!(
            matches!(&s.members[1].class, FieldClass::Sequence { length, .. } if length == "_n")
        );
        match &s.members[2].class {
            FieldClass::Array { element, length: 2 } => {
                assert!(matches!(**element, FieldClass::Array { length: 3, .. }));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(s.members[3].class, FieldClass::Int(_)));
        assert!(
            matches!(&s.members[4].class, FieldClass::Sequence { length, .. } if length == "event.fields._n")
        );
    }

    #[test]
    fn enums_variants_and_named_types() {
        let m = md("
            enum color : uint8_t { RED, GREEN = 5, \"BLUE\", ANY = 10 ... 20, NEG = -1 };
            struct pair { uint8_t a; uint8_t b; } align(32);
            variant opts { uint8_t RED; string GREEN; };
            event { name = e; fields := struct {
                enum color c;
                struct pair p;
                variant opts <c> v;
                enum { X } implicit_int;
            }; };");
        let s = fields(&m);
        let FieldClass::Enum(e) = &s.members[0].class else {
            panic!()
        };
        let labels: Vec<_> = e
            .mappings
            .iter()
            .map(|m| (m.label.as_str(), m.low, m.high))
            .collect();
        assert_eq!(
            labels,
            vec![
                ("RED", 0, 0),
                ("GREEN", 5, 5),
                ("BLUE", 6, 6),
                ("ANY", 10, 20),
                ("NEG", -1, -1)
            ]
        );
        assert_eq!(s.members[1].class.align(), 32);
        let FieldClass::Variant(v) = &s.members[2].class else {
            panic!()
        };
        assert_eq!(v.tag.as_deref(), Some("c"));
        assert_eq!(v.options.len(), 2);
        let FieldClass::Enum(e) = &s.members[3].class else {
            panic!()
        };
        assert!(e.container.signed);
        assert_eq!(s.align, 32);
    }

    #[test]
    fn integer_attributes() {
        let m = md("clock { name = mono; freq = 100; offset_s = -3; absolute = TRUE; };
            event { name = \"a:b\"; loglevel = 4; fields := struct {
                integer { size = 27; align = 1; signed = true; byte_order = be; base = hex; encoding = UTF8; map = clock.mono.value; } x;
                floating_point { exp_dig = 11; mant_dig = 53; align = 64; } f;
                string { encoding = ASCII; } s;
                typealias integer { size = 3; } := tiny;
                tiny t;
            }; };");
        let s = fields(&m);
        let FieldClass::Int(i) = &s.members[0].class else {
            panic!()
        };
        assert_eq!(
            (
                i.size,
                i.align,
                i.signed,
                i.byte_order,
                i.base,
                i.encoding,
                i.clock.as_deref()
            ),
            (
                27,
                1,
                true,
                ByteOrder::Big,
                16,
                Encoding::Utf8,
                Some("mono")
            )
        );
        assert_eq!(s.members[1].class.align(), 64);
        assert_eq!(s.members[2].class, FieldClass::String(Encoding::Ascii));
        assert!(matches!(&s.members[3].class, FieldClass::Int(t) if t.size == 3 && t.align == 1));
        let c = &m.clocks[0];
        assert_eq!((c.freq, c.offset_s, c.absolute), (100, -3, true));
        assert_eq!(m.streams[&0].events[&0].loglevel, Some(4));
    }

    #[test]
    fn unknown_blocks_and_attributes_are_skipped() {
        let m = md("callsite { name = \"x\"; func = \"f\"; };
            stream { id = 0; something.new = 3; };
            event { name = e; model.emf.uri = \"u\"; };");
        assert_eq!(m.streams[&0].events[&0].name, "e");
    }

    #[test]
    fn env_values() {
        let m = md("env { hostname = \"h\"; vpid = 12; neg = -4; hostname = \"h2\"; };");
        assert_eq!(m.env_str("hostname"), Some("h2"));
        assert_eq!(m.env("vpid"), Some(&EnvValue::Int(12)));
        assert_eq!(m.env("neg"), Some(&EnvValue::Int(-4)));
    }

    #[test]
    fn errors_are_reported_with_lines() {
        assert!(
            err("event { fields := struct { nosuch_t x; }; };").contains("unknown type 'nosuch_t'")
        );
        assert!(
            err("event { fields := struct { uint8_t a; uint8_t a; }; };")
                .contains("duplicate member 'a'")
        );
        assert!(err("stream { id = 1; }; event { stream_id = 2; };").contains("unknown stream 2"));
        assert!(err("stream { id = 1; }; stream { id = 1; };").contains("declared twice"));
        assert!(err("event { id = 1; }; event { id = 1; };").contains("declared twice"));
        assert!(err("typealias integer { size = 65; } := x;").contains("not between 1 and 64"));
        assert!(err("typealias integer { size = 8; align = 3; } := x;").contains("power of two"));
        assert!(
            err("typealias floating_point { exp_dig = 5; mant_dig = 11; } := h;")
                .contains("unsupported floating point")
        );
        assert!(err("typealias integer { size = 8; map = clock.nope.value; } := x; event { fields := struct { x a; }; };").contains("unknown clock 'nope'"));
        assert!(err("trace { };").contains("second trace block"));
        assert!(err("clock { freq = 1; };").contains("clock has no name"));
        assert!(err("event { fields := struct { uint8_t a }; };").contains("expected ';'"));
        let e = parse("trace { major = 1; };\n\n  garbage").unwrap_err();
        assert_eq!(e.line, 3);
        assert!(
            parse("typealias integer { size = 8; } := x;")
                .unwrap_err()
                .message
                .contains("no trace block")
        );
        assert!(parse("trace { major = 2; };").is_err());
    }

    #[test]
    fn alias_chains_cannot_nest_or_grow_without_bound() {
        let mut body = String::from("typedef uint8_t t0[1];\n");
        for i in 1..200 {
            body.push_str(&format!("typedef t{} t{i}[1];\n", i - 1));
        }
        assert!(err(&body).contains("deeper than"));
        // Each alias doubles the previous one: 2^30 members if expanded.
        let mut body = String::from("typealias struct { uint8_t a; uint8_t b; } := s0;\n");
        for i in 1..30 {
            body.push_str(&format!(
                "typealias struct {{ s{p} a; s{p} b; }} := s{i};\n",
                p = i - 1
            ));
        }
        assert!(err(&body).contains("more than"), "{}", err(&body));
    }

    #[test]
    fn deep_nesting_is_refused() {
        let mut body = String::from("event { fields := ");
        for _ in 0..100 {
            body.push_str("struct { ");
        }
        body.push_str("uint8_t x;");
        for _ in 0..100 {
            body.push_str(" } a;");
        }
        let e = err(&body);
        assert!(e.contains("deeper than"), "{e}");
    }
}
