"""One module per view of the page; each draws into the container it is given and reruns alone (a fragment)."""
