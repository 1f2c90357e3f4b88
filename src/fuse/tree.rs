//! The static tree of served files, built from the catalog: directories and files by name,
//! numbered from the root (1). The shared tree serves it as is; the cached tree serves a copy
//! under each container's key directory.

use super::reply::Attr;
use super::ROOT;
use crate::catalog::Served;

#[derive(Debug)]
enum Kind {
    Dir(Vec<u64>),
    File(Served),
}

#[derive(Debug)]
struct Node {
    name: String,
    parent: u64,
    kind: Kind,
}

/// A child in [`Tree::list`]: its number, name and whether it is a directory.
pub(crate) type TreeEntry<'a> = (u64, &'a str, bool);

/// The static tree of served files: inode `i` is `nodes[i - 1]`.
#[derive(Debug)]
pub struct Tree {
    nodes: Vec<Node>,
}

impl Tree {
    /// Builds the directories and files for `views`.
    pub fn new(views: &[Served]) -> Self {
        let mut t = Tree { nodes: vec![Node { name: String::new(), parent: ROOT, kind: Kind::Dir(vec![]) }] };
        for &v in views {
            t.add(v.path(), v);
        }
        t
    }

    /// Adds file `path` serving `v`, and the directories on its way; numbered after every
    /// node already there.
    pub(crate) fn add(&mut self, path: &str, v: Served) {
        let mut dir = ROOT;
        let parts: Vec<&str> = path.split('/').collect();
        for (i, part) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            dir = match self.lookup(dir, part) {
                Some(ino) => ino,
                None => {
                    let kind = if last { Kind::File(v) } else { Kind::Dir(vec![]) };
                    self.nodes.push(Node { name: part.to_string(), parent: dir, kind });
                    let ino = self.nodes.len() as u64;
                    if let Some(Node { kind: Kind::Dir(c), .. }) = self.nodes.get_mut(dir as usize - 1) {
                        c.push(ino);
                    }
                    ino
                }
            };
        }
    }

    /// How many nodes the tree has.
    pub(crate) fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Node `ino` (a tree number).
    fn node(&self, ino: u64) -> Option<&Node> {
        self.nodes.get((ino as usize).wrapping_sub(1))
    }

    /// Child `name` of directory `dir` (tree numbers).
    pub(crate) fn lookup(&self, dir: u64, name: &str) -> Option<u64> {
        match &self.node(dir)?.kind {
            Kind::Dir(c) => c.iter().copied().find(|&i| self.node(i).is_some_and(|n| n.name == name)),
            Kind::File(_) => None,
        }
    }

    /// The view file `ino` is, if it is one (`ino` is the tree's own number).
    pub(crate) fn view(&self, ino: u64) -> Option<Served> {
        match self.node(ino)?.kind {
            Kind::File(v) => Some(v),
            Kind::Dir(_) => None,
        }
    }

    /// The entries of directory `dir` (tree numbers): its parent, then (number, name, is a
    /// directory) per child; `None` if `dir` is not a directory.
    pub(crate) fn list(&self, dir: u64) -> Option<(u64, Vec<TreeEntry<'_>>)> {
        let n = self.node(dir)?;
        let Kind::Dir(c) = &n.kind else { return None };
        let children = c
            .iter()
            .filter_map(|&i| self.node(i).map(|k| (i, k.name.as_str(), matches!(k.kind, Kind::Dir(_)))))
            .collect();
        Some((n.parent, children))
    }

    /// The attributes of tree node `node`, reported as inode `ino`.
    pub(crate) fn attr(&self, node: u64, ino: u64, time: u64) -> Option<Attr> {
        let n = self.node(node)?;
        Some(match &n.kind {
            Kind::Dir(c) => {
                Attr { ino, size: 0, mode: libc::S_IFDIR | 0o555, nlink: 2 + c.len() as u32, time, nsec: 0 }
            }
            Kind::File(v) => Attr { ino, size: 0, mode: libc::S_IFREG | v.mode(), nlink: 1, time, nsec: 0 },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_view_is_a_file_reached_by_its_path_from_the_root() {
        let t = Tree::new(Served::ALL);
        for &v in Served::ALL {
            let mut node = ROOT;
            for part in v.path().split('/') {
                node = t.lookup(node, part).unwrap_or_else(|| panic!("{} at {part}", v.path()));
            }
            assert_eq!(t.view(node), Some(v), "{}", v.path());
            assert!(t.list(node).is_none(), "a file lists nothing");
            let a = t.attr(node, node, 0).expect("attributes");
            assert_eq!(a.mode & libc::S_IFMT, libc::S_IFREG);
        }
        let (parent, children) = t.list(ROOT).expect("the root is a directory");
        assert_eq!(parent, ROOT);
        assert!(children.iter().any(|&(_, name, dir)| name == "proc" && dir));
        assert_eq!(t.lookup(ROOT, "nope"), None);
        assert_eq!(t.view(0), None);
        assert_eq!(t.view(u64::MAX), None, "numbers past the tree are nothing");
    }

    #[test]
    fn an_added_file_is_numbered_after_the_tree_and_moves_no_other() {
        let mut t = Tree::new(Served::ALL);
        let before: Vec<Option<Served>> = (1..=t.len() as u64).map(|i| t.view(i)).collect();
        t.add(".bench/floor", Served::Floor);
        t.add(".bench/floor-1", Served::Floor);
        let after: Vec<Option<Served>> = (1..=before.len() as u64).map(|i| t.view(i)).collect();
        assert_eq!(after, before, "every node keeps its number");
        let bench = t.lookup(ROOT, ".bench").expect("the directory on the way");
        assert_eq!(bench, before.len() as u64 + 1);
        let (parent, children) = t.list(bench).expect("a directory");
        assert_eq!(parent, ROOT);
        let names: Vec<&str> = children.iter().map(|&(_, n, _)| n).collect();
        assert_eq!(names, ["floor", "floor-1"], "one directory for both");
        assert_eq!(t.lookup(bench, "floor-1").and_then(|i| t.view(i)), Some(Served::Floor));
    }
}
