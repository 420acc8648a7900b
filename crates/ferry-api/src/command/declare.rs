//! The `commands!` declaration macro: from one declaration per command
//! (word, area, documentation, typed arguments with their rules, policy)
//! come the argument structs, the [`Command`](super::Command) enum, the
//! parser, the writer back to words, the policies and the help specs.

macro_rules! commands {
    ($(
        $(#[doc = $cdoc:literal])+
        $variant:ident($args:ident) = $name:literal in $area:ident, listing = $listing:literal,
            policy($policy:expr) {
            $( $(#[doc = $fdoc:literal])+ $field:ident : $ty:ty = $rule:expr ),* $(,)?
        }
    )+) => {
        $(
            $(#[doc = $cdoc])+
            #[derive(Debug, Clone)]
            pub struct $args {
                $( $(#[doc = $fdoc])+ pub $field: $ty, )*
                /// The keys given explicitly (the others took their defaults).
                pub given: Given,
            }

            impl $args {
                #[allow(unused_mut)]
                fn parse(mut r: ArgReader) -> Result<Self, ArgError> {
                    let given = Given::of(&r, &[$(stringify!($field)),*]);
                    let v = $args {
                        $( $field: Rule::<$ty>::take(&$rule, &mut r, stringify!($field))?, )*
                        given,
                    };
                    r.finish()?;
                    Ok(v)
                }

                /// The arguments as words that parse back to them.
                #[allow(unused_mut)]
                fn to_words(&self, words: &mut Vec<String>) {
                    let mut rest = Vec::new();
                    $( Rule::<$ty>::render(&$rule, &self.$field, stringify!($field), words, &mut rest); )*
                    words.extend(rest);
                }

                fn arg_specs() -> Vec<ArgSpec> {
                    vec![$({
                        let (ty, rule) = Rule::<$ty>::describe(&$rule);
                        ArgSpec { key: stringify!($field), ty, rule, doc: vec![$($fdoc),+] }
                    }),*]
                }
            }
        )+

        /// Every operation ferry performs, whichever door it came through.
        // One Command is made per request and moved a few times: the size
        // of bcreate's many keys costs nothing worth a Box.
        #[allow(clippy::large_enum_variant)]
        #[derive(Debug, Clone)]
        pub enum Command {
            $( $(#[doc = $cdoc])+ $variant($args), )+
        }

        /// The declarations, in help order.
        pub static COMMANDS: &[CommandSpec] = &[
            $( CommandSpec {
                name: $name,
                area: Area::$area,
                doc: &[$($cdoc),+],
                listing: $listing,
                args: $args::arg_specs,
            }, )+
        ];

        impl Command {
            /// Type the arguments of command `name`.
            pub fn parse(name: &str, raw: RawArgs) -> Result<Command, ArgError> {
                match name {
                    $( $name => $args::parse(ArgReader::new($name, raw)).map(Command::$variant), )+
                    _ => Err(ArgError::UnknownCommand(name.chars().take(64).collect())),
                }
            }

            /// Type a whole ferry command line given word by word (the
            /// command word first), e.g. the words of a queued task.
            pub fn parse_words(words: &[String]) -> Result<Command, ArgError> {
                let (name, args) = words.split_first().ok_or(ArgError::Missing { key: "cmd" })?;
                Command::parse(name, RawArgs::from_words(args.iter().cloned())?)
            }

            /// The command's word.
            pub fn name(&self) -> &'static str {
                match self { $( Command::$variant(_) => $name, )+ }
            }

            /// The command as ferry command words (its word first), which
            /// [`Command::parse_words`] reads back to it: how a command
            /// built in code is queued as a task.
            pub fn to_words(&self) -> Vec<String> {
                let mut words = vec![self.name().to_owned()];
                match self { $( Command::$variant(a) => a.to_words(&mut words), )+ }
                words
            }

            /// Where this command may run, as declared beside it.
            pub fn policy(&self) -> Policy {
                match self { $( Command::$variant(a) => ($policy)(a), )+ }
            }
        }
    };
}
